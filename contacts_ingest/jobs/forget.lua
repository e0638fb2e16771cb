#!lua flags=allow-oom
-- The job's final status row committed: drop its record and its entry in its user's
-- index of pending jobs, tell a waiting client, and queue the job's completion callback
-- if it has one (in its receiver's lane: contacts_ingest/jobs/callbacks.py). Done once:
-- a redelivery finds no record, so a callback is queued once per job.
-- Allowed while Redis is over maxmemory: it frees the record, larger than the callback
-- entry it may add, so workers can finish jobs in a Redis that refuses admissions.
-- KEYS[1] the job's record (hash)   KEYS[2] the job's completion channel
-- ARGV[1] the key prefix (the user's index and the callback's keys are named from the
-- record's fields: <prefix>pending:<user>, <prefix>callback:<job>,
-- <prefix>callbacks:lane:<origin>, <prefix>callbacks:lanes)
-- ARGV[2] the job id   ARGV[3] the callback record's TTL in seconds
-- Returns the number of records dropped (0 or 1).
local record = redis.call('HMGET', KEYS[1], 'waiter', 'user_id', 'callback', 'callback_lane')
if record[1] then redis.call('PUBLISH', KEYS[2], '1') end
if record[2] then redis.call('ZREM', ARGV[1] .. 'pending:' .. record[2], ARGV[2]) end
if record[3] and record[4] then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local callback = ARGV[1] .. 'callback:' .. ARGV[2]
  redis.call('HSET', callback, 'owner', record[3], 'lane', record[4], 'failures', 0,
             'first_ms', now)
  redis.call('EXPIRE', callback, tonumber(ARGV[3]))
  redis.call('ZADD', ARGV[1] .. 'callbacks:lane:' .. record[4], now, ARGV[2])
  redis.call('ZADD', ARGV[1] .. 'callbacks:lanes', 'LT', now, record[4])
end
return redis.call('DEL', KEYS[1])
