-- A callback sender takes the callbacks that are due, lane by lane (a lane is one
-- receiver's origin), at most ARGV[4] from a lane less what it has in flight there, so
-- a slow receiver holds back only its own lane. Each one taken is leased for ARGV[2]
-- ms: due again then, should its sender die before settling it.
-- KEYS[1] the lanes (sorted set: origin -> a lower bound of its earliest due time, ms)
-- ARGV[1] the key prefix (<prefix>callbacks:lane:<origin>, <prefix>callback:<job>)
-- ARGV[2] lease in ms   ARGV[3] most callbacks to take in all   ARGV[4] most per lane
-- ARGV[5], ARGV[6], ... pairs: a lane, and how many the sender has in flight there
-- Returns {now in ms, then five items per callback: job id, owner, lane, failures so
-- far, first attempt's time in ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local in_flight = {}
for i = 5, #ARGV, 2 do in_flight[ARGV[i]] = tonumber(ARGV[i + 1]) end
local left = tonumber(ARGV[3])
local taken = {now}
for _, lane in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)) do
  if left <= 0 then break end
  local lane_key = ARGV[1] .. 'callbacks:lane:' .. lane
  local free = math.min(left, tonumber(ARGV[4]) - (in_flight[lane] or 0))
  if free > 0 then
    for _, job in ipairs(redis.call('ZRANGEBYSCORE', lane_key, '-inf', now, 'LIMIT', 0, free)) do
      local callback = redis.call('HMGET', ARGV[1] .. 'callback:' .. job, 'owner', 'failures',
                                  'first_ms')
      if callback[1] then
        redis.call('ZADD', lane_key, now + tonumber(ARGV[2]), job)
        for _, item in ipairs({job, callback[1], lane, callback[2], callback[3]}) do
          table.insert(taken, item)
        end
        left = left - 1
      else
        redis.call('ZREM', lane_key, job) -- its record expired
      end
    end
  end
  local first = redis.call('ZRANGE', lane_key, 0, 0, 'WITHSCORES')
  if first[2] then
    redis.call('ZADD', KEYS[1], first[2], lane)
  else
    redis.call('ZREM', KEYS[1], lane)
  end
end
return taken
