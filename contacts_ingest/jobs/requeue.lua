#!lua
-- An operator retries a dead-lettered job: it goes back on its queue under its own id
-- and acceptance time, its record saying queued again (with its completion callback,
-- if it had one), in its user's index of pending jobs. Like admit.lua, refused whole
-- while Redis is over maxmemory.
--
-- KEYS[1] the job's record (hash)   KEYS[2] the queue (list)
-- KEYS[3] the user's index of pending jobs (sorted set: job id -> acceptance time)
-- ARGV[1] user id   ARGV[2] operation   ARGV[3] acceptance time in microseconds
-- ARGV[4] record TTL in seconds   ARGV[5] the job's Celery message   ARGV[6] job id
-- ARGV[7], ARGV[8] who is called back and the receiver's origin, or '' and ''
-- Returns 1.
redis.call('HSET', KEYS[1], 'user_id', ARGV[1], 'operation', ARGV[2],
           'status', 'queued', 'accepted_at_us', ARGV[3], 'attempts', 0)
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'callback', ARGV[7], 'callback_lane', ARGV[8])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[6])
if redis.call('TTL', KEYS[3]) < tonumber(ARGV[4]) then
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
end
redis.call('LPUSH', KEYS[2], ARGV[5])
return 1
