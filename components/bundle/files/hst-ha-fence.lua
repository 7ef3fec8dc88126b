-- hst-ha fence: components/bundle/files/hst-ha-fence.lua; why: render_haproxy_fence in render.py.
-- A task in HAProxy that holds every OPEN session, and every new one, to haproxy.cfg's routing
-- rule: a session may stay on a Redis server only while a majority of Sentinels name that server,
-- and a primary that fell is held while another node says role:master.
--
-- The same file on every node, and nothing is rendered into it: the routed backend, the guard
-- backends' prefix and the stats socket come from haproxy.cfg's `setenv` lines; each server's guard
-- backend, its Sentinels and their majority from HAProxy's own backends.
-- luacheck: read globals core
-- luacheck: globals hst_ha_fence

-- How long a fallen primary must be the only node saying role:master before it is routed to again.
local SOLE_MS = 500
-- How often the rule is judged again; the Sentinel checks it reads run every 250 ms.
local PERIOD_MS = 100

local held = {}
-- The fence's decisions, for hst-ha-fence-metrics.lua where the node serves metrics:
-- how often each decision was taken, by "<held|released|ended> <server>" (ended: a server's
-- open sessions were ended), the last one, and the live held, routable and keep tables (keep: the
-- server's open sessions may stay).
hst_ha_fence = { counts = {}, held = held }
local function count(key)
  hst_ha_fence.counts[key], hst_ha_fence.last = (hst_ha_fence.counts[key] or 0) + 1, key
end

-- A starting HAProxy counts every server and every Sentinel guard UP until its first check, so it
-- routed its first clients to whatever said role:master last (a stale old primary, after a whole
-- node restarted). Until every check of the routed backend and of every guard has run once, every
-- server is held. HAProxy 2.6 has no `init-state`; the check status INI is on 2.6 and 2.8 alike.
local judged = false
local function all_checked()
  local routed, prefix = os.getenv("HST_HA_ROUTED_BACKEND"), os.getenv("HST_HA_GUARD_PREFIX") or ""
  for name, backend in pairs(core.backends) do
    if name == routed or (prefix ~= "" and string.sub(name, 1, #prefix) == prefix) then
      for _, server in pairs(backend.servers) do
        local check = string.gsub(server:get_stats()["check_status"] or "", "^[*] ", "")
        if check == "" or check == "INI" then return false end
      end
    end
  end
  return true
end

local function all_judged()
  judged = judged or all_checked()
  return judged
end

-- For use-server in haproxy.cfg: "1" while a server is held.
core.register_fetches("hst_ha_held", function(_, name)
  if not all_judged() or held[name] then return "1" end
  return "0"
end)

local function is_up(stats)
  return string.sub(stats["status"], 1, 2) == "UP"
end

-- How many of a guard's Sentinels name its server now, and how many Sentinels it has.
local function sentinels_naming(guard)
  local naming, total = 0, 0
  for _, sentinel in pairs(guard.servers) do
    total = total + 1
    if is_up(sentinel:get_stats()) then naming = naming + 1 end
  end
  return naming, total
end

local function observe(servers, guards)
  local seen = {}
  for name, server in pairs(servers) do
    local stats = server:get_stats()
    local check = string.gsub(stats["check_status"] or "", "^[*] ", "")
    local naming, sentinels = 0, 0
    if guards[name] then naming, sentinels = sentinels_naming(guards[name]) end
    seen[name] = {
      up = is_up(stats),
      says_master = check == "L7OK",  -- its last role check passed (UP, or rising)
      naming = naming,
      sentinels = sentinels,
      named = sentinels > 0 and naming >= math.floor(sentinels / 2) + 1,
      open = tonumber(stats["scur"]) or 0,
    }
  end
  return seen
end

local function now_ms()
  local now = core.now()
  return now.sec * 1000 + math.floor(now.usec / 1000)
end

local function end_sessions(server, name, open, why)
  server:shut_sess()
  count("ended " .. name)
  core.Warning(string.format("hst-ha fence: ended %d sessions to %s: %s", open, name, why))
end

-- After a reload the former worker keeps serving the sessions it carries (a reload drops none), but
-- HAProxy runs no health check in a stopping worker: its own view of the servers is frozen. So it
-- asks the current worker, which has taken over the stats socket's path, for its verdicts (the
-- `hst-ha verdicts` command below) and ends its sessions to every server the current worker would
-- not keep, or does not have (a node that left the cluster). Until the current worker has run every
-- check once (about a second) there is no verdict; with none for HST_HA_ROUTE_WAIT_MS, it ends them all.
local function current_verdicts(own_pid)
  local socket = core.tcp()
  socket:settimeout(1)
  if not socket:connect("unix@" .. (os.getenv("HST_HA_SOCKET") or "")) then return nil end
  socket:send("hst-ha verdicts\n")
  local text = socket:receive("*a")
  socket:close()
  local pid, judged_now = string.match(text or "", "^pid (%d+) judged (%d)")
  if pid == nil or pid == own_pid or judged_now ~= "1" then return nil end
  local keep = {}
  for name, yes in string.gmatch(text, "\n(%S+) keep (%d)") do keep[name] = yes == "1" end
  return keep
end

local function fence_former(servers, since_ms, own_pid)
  local keep = current_verdicts(own_pid)
  local blind_ms = now_ms() - since_ms
  for name, server in pairs(servers) do
    local open = tonumber(server:get_stats()["scur"]) or 0
    if open > 0 then
      if keep and not keep[name] then
        end_sessions(server, name, open, "the current worker would not keep them")
      elseif not keep and blind_ms >= (tonumber(os.getenv("HST_HA_ROUTE_WAIT_MS")) or 0) then
        end_sessions(server, name, open, string.format("no verdict from the current worker for %d ms", blind_ms))
      end
    end
  end
  return keep ~= nil
end

local function stopping()
  return tostring(core.get_info()["Stopping"]) == "1"
end

local function fence(servers, guards)
  local routable, keep, sole_since = {}, {}, {}
  hst_ha_fence.routable, hst_ha_fence.keep = routable, keep
  while not stopping() do
    local ms = now_ms()
    local seen = observe(servers, guards)
    for name, s in pairs(seen) do
      if routable[name] and not s.up then
        held[name] = true
        count("held " .. name)
        core.Warning(string.format("hst-ha fence: %s fell; held while another node says role:master", name))
      end
      if held[name] then
        local rival = nil
        for other, o in pairs(seen) do
          if other ~= name and o.says_master then rival = other end
        end
        if s.up and not rival then
          sole_since[name] = sole_since[name] or ms
          if ms - sole_since[name] >= SOLE_MS then
            held[name], sole_since[name] = nil, nil
            count("released " .. name)
            core.Warning(string.format("hst-ha fence: %s released: the only node that says role:master", name))
          end
        else
          sole_since[name] = nil
        end
      end
      routable[name] = s.up and s.says_master and s.named and not held[name]
      keep[name] = s.named and not held[name]
      if s.open > 0 and not keep[name] then
        end_sessions(servers[name], name, s.open,
                     held[name] and "held" or string.format("%d of %d Sentinels name it", s.naming, s.sentinels))
      end
    end
    core.msleep(PERIOD_MS)
  end
  -- A former worker from here on, until its last session ends and HAProxy ends it.
  local own_pid, since_ms = tostring(core.get_info()["Pid"]), now_ms()
  core.Warning("hst-ha fence: reloaded; the sessions still open here follow the current worker's verdicts")
  while true do
    if fence_former(servers, since_ms, own_pid) then since_ms = now_ms() end
    core.msleep(PERIOD_MS)
  end
end

-- The current worker's verdicts, for its former workers (above): "pid <pid> judged <0|1>", then per
-- routed server "<name> keep <0|1> routable <0|1>". On the stats socket (mode 600, HAProxy's user).
core.register_cli({ "hst-ha", "verdicts" }, "hst-ha fence: per routed server, may its sessions stay",
  function(applet)
    local lines = { string.format("pid %s judged %d", tostring(core.get_info()["Pid"]),
                                  (all_judged() and next(hst_ha_fence.keep or {})) and 1 or 0) }
    for name, yes in pairs(hst_ha_fence.keep or {}) do
      lines[#lines + 1] = string.format("%s keep %d routable %d", name, yes and 1 or 0,
                                        (hst_ha_fence.routable or {})[name] and 1 or 0)
    end
    applet:send(table.concat(lines, "\n") .. "\n")
  end)

-- A client that connects while no server is routable (between a primary's demotion and the
-- Sentinels naming its successor: about a second in a planned switchover, down-after and more in a
-- failover) waits here for a route instead of being closed at once: it sees a pause, not an error
-- it would retry in a tight loop. Bounded by HST_HA_ROUTE_WAIT_MS (haproxy.cfg); past it, or with
-- the fence off, the connection goes on to the rule as before and is closed if nothing is routable.
-- It reads the fence task's verdicts (every PERIOD_MS) rather than judging the servers itself:
-- every waiting client re-reading every check's stats every few ms starved Redis and the Sentinels
-- on a 2-core machine (a false failover in a rolling restart drill).
local WAIT_STEP_MS = 20
core.register_action("hst_ha_await_route", { "tcp-req" }, function()
  local routable = hst_ha_fence.routable
  if not routable then return end
  local deadline = now_ms() + (tonumber(os.getenv("HST_HA_ROUTE_WAIT_MS")) or 0)
  while now_ms() < deadline do
    if all_judged() then
      for _, yes in pairs(routable) do
        if yes then return end
      end
    end
    core.msleep(WAIT_STEP_MS)
  end
  count("unrouted")
end)

core.register_task(function()
  local servers = core.backends[os.getenv("HST_HA_ROUTED_BACKEND")].servers
  local guards, any = {}, false
  for name in pairs(servers) do
    -- Named as by guard_backend in components/bundle/names.py. No guard: never named (fail closed).
    guards[name] = core.backends[os.getenv("HST_HA_GUARD_PREFIX") .. string.gsub(name, "%-", "_")]
    any = any or guards[name] ~= nil
  end
  if not any then
    -- The drills' naive baseline only: it strips the guards to show what they prevent.
    core.Warning("hst-ha fence: no guard backends; nothing is fenced")
    return
  end
  fence(servers, guards)
end)
