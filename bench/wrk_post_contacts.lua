-- wrk script: POST distinct contacts with the key in $KEY.
--   KEY=cik_... wrk -t2 -c32 -d20s --latency -s bench/wrk_post_contacts.lua http://127.0.0.1:8000
-- With RATE=<requests per second> (and CONNECTIONS=<the -c value>) each connection
-- paces itself so that all of them together offer about RATE requests per second.
local counter = 0
local thread_id = 0
local pause_ms = 0

setup = function(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

init = function(args)
  local rate = tonumber(os.getenv("RATE") or "0")
  local connections = tonumber(os.getenv("CONNECTIONS") or "1")
  if rate > 0 then
    pause_ms = 1000 * connections / rate
  end
end

delay = function()
  return pause_ms
end

request = function()
  counter = counter + 1
  local body = string.format(
    '{"email":"user%s-%d-%d@example.com","firstName":"Bench","lastName":"Mark",'
      .. '"company":"Acme","socialProfiles":{"twitter":"@b"},"source":"bench"}',
    os.getenv("RUN") or "", tid, counter)
  return wrk.format("POST", "/io/contacts/contacts", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. (os.getenv("KEY") or ""),
  }, body)
end
