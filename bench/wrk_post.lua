-- wrk script for bench/serving.py: POST prepared bodies round robin, one JSON line of results at the end.
-- MLCD_WRK_BODIES names a folder with a "manifest" (one line per body: file name, then the value of the
-- Inference-Header-Content-Length header for binary tensor bodies, or nothing) and the body files;
-- MLCD_WRK_PATH is the request path; MLCD_WRK_CTYPE the Content-Type of every body.
local dir = os.getenv("MLCD_WRK_BODIES")
local path = os.getenv("MLCD_WRK_PATH")
local ctype = os.getenv("MLCD_WRK_CTYPE") or "application/json"
local prepared = {}
local next_index = 0

local function load()
  local manifest = assert(io.open(dir .. "/manifest", "r"))
  for line in manifest:lines() do
    local name, hlen = line:match("^(%S+)%s*(%S*)$")
    local f = assert(io.open(dir .. "/" .. name, "rb"))
    local body = f:read("*a")
    f:close()
    local headers = { ["Content-Type"] = ctype }
    if hlen ~= "" then headers["Inference-Header-Content-Length"] = hlen end
    prepared[#prepared + 1] = wrk.format("POST", path, headers, body)
  end
  manifest:close()
end

-- Runs in every thread's own Lua state: each thread prepares the requests once, none is built per request.
function init(args)
  load()
  next_index = math.random(#prepared) - 1
end

function request()
  next_index = next_index % #prepared + 1
  return prepared[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'MLCD_WRK {"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
