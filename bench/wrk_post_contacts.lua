-- wrk script: POST distinct contacts with the key in $KEY.
--   KEY=cik_... wrk -t2 -c32 -d20s --latency -s bench/wrk_post_contacts.lua http://127.0.0.1:8000
local counter = 0
local thread_id = 0

setup = function(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

request = function()
  counter = counter + 1
  local body = string.format(
    '{"email":"user%d-%d@example.com","firstName":"Bench","lastName":"Mark",'
      .. '"company":"Acme","socialProfiles":{"twitter":"@b"},"source":"bench"}',
    tid, counter)
  return wrk.format("POST", "/io/contacts/contacts", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. os.getenv("KEY"),
  }, body)
end
