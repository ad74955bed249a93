-- wrk: random RANGE_LEN-byte range reads, 4 KiB aligned, inside an OBJ_SIZE-byte object;
-- or, with RANGES_FILE, inside one of the extents it lists ("path start length" per line,
-- e.g. the chunks one worker owns), each range kept inside its extent.
local size = tonumber(os.getenv("OBJ_SIZE"))
local len = tonumber(os.getenv("RANGE_LEN"))
local extents = {}

local ranges_file = os.getenv("RANGES_FILE")
if ranges_file and ranges_file ~= "" then
  for line in io.lines(ranges_file) do
    local path, start, length = line:match("^(%S+)%s+(%d+)%s+(%d+)")
    if path then extents[#extents + 1] = { path, tonumber(start), tonumber(length) } end
  end
end

function setup(thread) thread:set("id", math.random(1, 1e9)) end
function init(args) math.randomseed(id or os.time()) end

local function range(base, extent, n)
  local start = base + math.random(0, math.floor((extent - n) / 4096)) * 4096
  return { ["Range"] = "bytes=" .. start .. "-" .. (start + n - 1) }
end

function request()
  if #extents == 0 then
    return wrk.format("GET", nil, range(0, size, len))
  end
  local e = extents[math.random(1, #extents)]
  return wrk.format("GET", e[1], range(e[2], e[3], math.min(len, e[3])))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests": %d, "bytes": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d, "non2xx": %d}\n',
    summary.requests, summary.bytes, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
