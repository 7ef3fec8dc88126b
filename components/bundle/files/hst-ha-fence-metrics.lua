-- hst-ha fence metrics: components/bundle/files/hst-ha-fence-metrics.lua; why: components/bundle/observe.py.
-- Serves the fence's decisions (the `hst_ha_fence` table hst-ha-fence.lua keeps) as Prometheus text,
-- at /fence on the metrics frontend. Loaded only where the node has observers: the fence itself
-- stays as small as the user data needs it.
-- luacheck: read globals core hst_ha_fence

local KINDS = { held = "held", released = "released", ended = "sessions_ended" }

core.register_service("hst_ha_metrics", "http", function(applet)
  local out, routable, held = {}, hst_ha_fence.routable or {}, hst_ha_fence.held
  for key, n in pairs(hst_ha_fence.counts) do
    local kind, server = string.match(key, "^(%S+) (%S+)$")
    table.insert(out, string.format('hst_ha_fence_%s_total{server="%s"} %d', KINDS[kind], server, n))
  end
  for server, r in pairs(routable) do
    table.insert(out, string.format('hst_ha_fence_routable{server="%s"} %d', server, r and 1 or 0))
    table.insert(out, string.format('hst_ha_fence_held{server="%s"} %d', server, held[server] and 1 or 0))
  end
  table.insert(out, string.format('hst_ha_fence_last_decision_info{decision="%s"} 1', hst_ha_fence.last or ""))
  local body = table.concat(out, "\n") .. "\n"
  applet:set_status(200)
  applet:add_header("content-type", "text/plain; version=0.0.4")
  applet:add_header("content-length", string.len(body))
  applet:start_response()
  applet:send(body)
end)
