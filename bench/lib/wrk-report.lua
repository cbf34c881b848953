-- wrk script used by bench/run for every target.
--
-- Request shape comes from the environment so one script serves all targets:
--   BENCH_WRK_PATH     request target as written on the request line; an
--                      absolute-form URL ("http://127.0.0.1:8080/small")
--                      makes a forward-proxy request.  Default: the URL's path.
--   BENCH_WRK_HOST     Host header value (default: wrk's, from the URL).
--   BENCH_WRK_HEADERS  extra header lines, separated by "\n" ("Name: value").
--   BENCH_WRK_METHOD   request method (default GET).
--   BENCH_WRK_BODY     request body (wrk adds its Content-Length).
--   BENCH_WRK_MAX_REQUESTS  stop after about this many responses (each of
--                      the wrk threads stops after its share); used by the
--                      syscalls-per-request runs.  Default: no limit.
--   BENCH_WRK_THREADS_N  wrk -t, to split BENCH_WRK_MAX_REQUESTS.
--   BENCH_WRK_DONE_FILE  an empty file: each thread that has its share
--                      adds a line; the last one sends wrk SIGINT, so the
--                      run ends then instead of after -d.
--
-- done() prints one machine-readable line (latencies in microseconds):
--   BENCH_RESULT requests=N duration_us=N bytes=N rps=F p50_us=N p90_us=N
--     p99_us=N p999_us=N max_us=N mean_us=F err_connect=N err_read=N
--     err_write=N err_status=N err_timeout=N

local path = os.getenv("BENCH_WRK_PATH")
if path and path ~= "" then
   wrk.path = path
end

local method = os.getenv("BENCH_WRK_METHOD")
if method and method ~= "" then
   wrk.method = method
end

local body = os.getenv("BENCH_WRK_BODY")
if body and body ~= "" then
   wrk.body = body
end

local host = os.getenv("BENCH_WRK_HOST")
if host and host ~= "" then
   wrk.headers["Host"] = host
end

local extra = os.getenv("BENCH_WRK_HEADERS")
if extra and extra ~= "" then
   for line in string.gmatch(extra, "[^\n]+") do
      local name, value = string.match(line, "^([^:]+):%s*(.*)$")
      if name then
         wrk.headers[name] = value
      end
   end
end

-- A fixed number of requests: each thread stops after its share.
local max_requests = tonumber(os.getenv("BENCH_WRK_MAX_REQUESTS") or "")
local nthreads = tonumber(os.getenv("BENCH_WRK_THREADS_N") or "") or 1
if max_requests and max_requests > 0 then
   local share = math.ceil(max_requests / nthreads)
   local seen = 0
   function response(status, headers, body)
      seen = seen + 1
      if seen == share then
         wrk.thread:stop()
         -- wrk itself waits for -d; the last thread to finish ends it
         -- early with SIGINT (wrk then prints its summary as usual).
         local f = os.getenv("BENCH_WRK_DONE_FILE")
         if f and f ~= "" then
            -- (after this thread has ended: only wrk's main thread
            -- can take the signal then, and it cuts its sleep short)
            os.execute(string.format(
               "echo x >>'%s'; [ \"$(wc -l <'%s')\" -ge %d ] && " ..
               "{ (sleep 0.2; kill -INT $PPID) >/dev/null 2>&1 & }",
               f, f, nthreads))
         end
      end
   end
end

function done(summary, latency, requests)
   local secs = summary.duration / 1e6
   local rps = 0
   if secs > 0 then
      rps = summary.requests / secs
   end
   local e = summary.errors
   io.write(string.format(
      "BENCH_RESULT requests=%d duration_us=%d bytes=%d rps=%.1f " ..
      "p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%.1f " ..
      "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
      summary.requests, summary.duration, summary.bytes, rps,
      latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9),
      latency.max, latency.mean,
      e.connect, e.read, e.write, e.status, e.timeout))
end
