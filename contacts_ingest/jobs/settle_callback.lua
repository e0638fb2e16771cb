-- A sender is done with a callback it took: delivered or abandoned (ARGV[3] is -1), or
-- failed, to be tried again in ARGV[3] ms. A callback another sender settled meanwhile
-- (its lease ran out) is left alone.
-- KEYS[1] the lanes (sorted set)   KEYS[2] the callback's lane (sorted set)
-- KEYS[3] the callback's record (hash)
-- ARGV[1] the job id   ARGV[2] the lane (origin)   ARGV[3] delay in ms, or -1
-- Returns 1, or 0 if the callback was settled already.
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
if ARGV[3] == '-1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3])
  return 1
end
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[3], 'failures', 1)
redis.call('ZADD', KEYS[2], 'XX', due, ARGV[1])
redis.call('ZADD', KEYS[1], 'LT', due, ARGV[2])
return 1
