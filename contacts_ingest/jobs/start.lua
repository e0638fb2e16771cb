#!lua flags=allow-oom
-- A worker took the job: mark its record as processing and count the attempt.
-- Allowed while Redis is over maxmemory (a field and a counter on a record that exists),
-- so a worker drains a Redis that sheds admissions, or is even past its limit.
--
-- KEYS[1] the job's record (hash)
-- Returns the attempt number, or 0 if the job has no record (it is final, or unknown).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'processing')
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
