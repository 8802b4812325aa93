-- wrk script of bench/openloop.sh's ingress comparison: POST /api/chat/sendMessage with a valid
-- Bearer token, round-robin over the senders listed in $WRK_PAIRS ("<token> <conversationID>"
-- per line, written by bench/js/openloop.mjs). Counts answers by status in every thread and
-- prints one line `WRK_JSON {...}` with the totals (wrk's own summary counts any answer).
local creds = {}
for line in io.lines(os.getenv("WRK_PAIRS")) do
  local t, c = line:match("(%S+) (%S+)")
  if t then creds[#creds + 1] = { t, c } end
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

local reqs, n = {}, 0
counts = {}
function init(args)
  -- Requests are built once: the tool's own CPU should go to sending, not to formatting.
  for i, c in ipairs(creds) do
    reqs[i] = wrk.format("POST", "/api/chat/sendMessage", {
      ["Authorization"] = "Bearer " .. c[1],
      ["Content-Type"] = "application/json",
    }, '{"conversationID":"' .. c[2] .. '","message":"ingress benchmark message"}')
  end
end

function request()
  n = n + 1
  return reqs[(n % #reqs) + 1]
end

function response(status, headers, body)
  local k = tostring(status)
  counts[k] = (counts[k] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do parts[#parts + 1] = string.format('"%s":%d', k, v) end
  io.write(string.format('WRK_JSON {"secs":%.3f,"requests":%d,"socketErrors":%d,"p50ms":%.2f,"p99ms":%.2f,"status":{%s}}\n',
    summary.duration / 1e6, summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, table.concat(parts, ",")))
end
