#!lua
-- An operator retries a dead-lettered job: it goes back on its queue under its own id
-- and acceptance time, its record saying queued again. Like admit.lua, refused whole
-- while Redis is over maxmemory.
--
-- KEYS[1] the job's record (hash)   KEYS[2] the queue (list)
-- ARGV[1] user id   ARGV[2] operation   ARGV[3] acceptance time in microseconds
-- ARGV[4] record TTL in seconds   ARGV[5] the job's Celery message
-- Returns 1.
redis.call('HSET', KEYS[1], 'user_id', ARGV[1], 'operation', ARGV[2],
           'status', 'queued', 'accepted_at_us', ARGV[3], 'attempts', 0)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('LPUSH', KEYS[2], ARGV[5])
return 1
