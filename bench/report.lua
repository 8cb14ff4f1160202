-- wrk script: POST one unique, valid MboxII callback per request.
-- usage: wrk ... -s bench/report.lua URL -- <run-prefix>
local counter = 0
local prefix = "run"
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

function init(args)
  if args[1] then prefix = args[1] end
end

function request()
  counter = counter + 1
  local mobile = string.format("09%08d", counter % 100000000)
  local body = "ID=" .. prefix .. "-" .. math.floor(counter / 80)
    .. "&msgid=" .. prefix .. "-" .. counter
    .. "&type=Now&mobile=" .. mobile
    .. "&donetime=2026%2F11%2F26+12%3A00%3A00&statuscode=1&statusstr=DELIVRD"
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  io.write(string.format("SUMMARY requests=%d non2xx=%d errors=%d\n",
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  io.write(string.format("LATENCY p50=%.3f p99=%.3f max=%.3f\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
