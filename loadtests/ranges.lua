-- wrk: random RANGE_LEN-byte range reads, 4 KiB aligned, inside an OBJ_SIZE-byte object.
local size = tonumber(os.getenv("OBJ_SIZE"))
local len = tonumber(os.getenv("RANGE_LEN"))

function setup(thread) thread:set("id", math.random(1, 1e9)) end
function init(args) math.randomseed(id or os.time()) end

function request()
  local start = math.random(0, math.floor((size - len) / 4096)) * 4096
  return wrk.format("GET", nil, { ["Range"] = "bytes=" .. start .. "-" .. (start + len - 1) })
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests": %d, "bytes": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d, "non2xx": %d}\n',
    summary.requests, summary.bytes, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
