-- wrk: POST /workers heartbeats, cycling through the requests listed in HEARTBEATS_FILE, one per
-- line: the msgpack body in hex, then tab-separated "Name: value" headers (built by heartbeats.py).
local requests = {}

function setup(thread)
  thread:set("first", math.random(1, 1e9))
end

function init(args)
  for line in io.lines(os.getenv("HEARTBEATS_FILE")) do
    local fields, headers = {}, {}
    for field in line:gmatch("[^\t]+") do fields[#fields + 1] = field end
    for k = 2, #fields do
      local name, value = fields[k]:match("^([^:]+): (.*)$")
      headers[name] = value
    end
    local body = fields[1]:gsub("..", function(h) return string.char(tonumber(h, 16)) end)
    requests[#requests + 1] = wrk.format("POST", "/workers", headers, body)
  end
  at = (first or 0) % #requests
end

function request()
  at = at % #requests + 1
  return requests[at]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests": %d, "bytes": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d, "non2xx": %d}\n',
    summary.requests, summary.bytes, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
