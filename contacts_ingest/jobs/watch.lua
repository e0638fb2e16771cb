#!lua flags=allow-oom
-- A client waits for the job (Prefer: wait): ask for a completion message when its
-- record is dropped.
-- One field on a record that exists: allowed while Redis is over maxmemory, so a
-- replayed request may still wait while admissions are shed.
-- KEYS[1] the job's record (hash)
-- Returns 1, or 0 if the record is already gone (the job is final, or unknown).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'waiter', '1')
return 1
