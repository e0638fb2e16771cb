#!lua flags=allow-oom
-- The job's final status row committed: drop its record, and tell a waiting client.
-- Frees memory, so it is allowed while Redis is over maxmemory.
-- KEYS[1] the job's record (hash)   KEYS[2] the job's completion channel
-- Returns the number of records dropped (0 or 1).
if redis.call('HGET', KEYS[1], 'waiter') then redis.call('PUBLISH', KEYS[2], '1') end
return redis.call('DEL', KEYS[1])
