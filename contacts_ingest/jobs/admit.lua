#!lua
-- Admission: one atomic step, on Redis's own clock. A repeat of a request already
-- accepted under the same Idempotency-Key is answered from its record and counts
-- nothing; any other request counts against the user's rolling window (a sorted set of
-- admission times), and the same key with other content is refused there. A valid
-- request within the limit is recorded as queued, its Idempotency-Key remembered, and
-- its Celery message pushed onto the queue, all at once. Every verdict comes with the
-- window's state, for the RateLimit headers.
--
-- Load shedding: a valid request finds the queue already holding ARGV[15] jobs (0: no
-- limit) and is refused before it counts or records anything. And the script is
-- flagged (the first line, with no flags): Redis then refuses it whole, before it
-- runs, while its memory is over maxmemory. (Unflagged, Redis would decide at the
-- script's first write command, which frees memory here, and let every later write
-- through.) The board answers such a request from admit_readonly.lua instead.
--
-- KEYS[1] the user's window (sorted set)   KEYS[2] the job's record (hash)
-- KEYS[3] the idempotency record, or ''     KEYS[4] the queue (list)
-- KEYS[5] the user's index of pending jobs (sorted set: job id -> acceptance time)
-- ARGV[1] '1' to apply the limit, '0' to admit without counting (internal producers)
-- ARGV[2] limit   ARGV[3] window in microseconds   ARGV[4] this request's member id
-- ARGV[5] '1' to admit a job (the request is valid), '0' only to count the request
-- ARGV[6] user id   ARGV[7] operation   ARGV[8] job record TTL in seconds
-- ARGV[9] the request's fingerprint   ARGV[10] idempotency record TTL in seconds
-- ARGV[11], ARGV[12] the job's Celery message before and after its acceptance time
-- ARGV[13], ARGV[14] who is called back when the job is final (a key or endpoint id) and
-- the receiver's origin, or '' and ''
-- ARGV[15] the most jobs the queue may hold for a new one to be admitted, 0 for no limit
-- Returns {verdict, remaining (-1 without a limit), reset in microseconds, now in
-- microseconds, original job id, original operation}; verdict: 1 admitted (or counted),
-- 0 over the limit, 2 a replay of the original, 3 the key was used for other content,
-- 4 shed: the queue is full (nothing counted).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local verdict = 1
local seen = {}
if KEYS[3] ~= '' then
  seen = redis.call('HMGET', KEYS[3], 'fingerprint', 'job_id', 'operation')
  if seen[1] then
    verdict = seen[1] == ARGV[9] and 2 or 3
  end
end
if verdict == 1 and ARGV[5] == '1' and tonumber(ARGV[15]) > 0
   and redis.call('LLEN', KEYS[4]) >= tonumber(ARGV[15]) then
  return {4, -1, 0, now, '', ''}
end
local remaining = -1
local reset = 0
if ARGV[1] == '1' then
  local limit = tonumber(ARGV[2])
  local window = tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  local used = redis.call('ZCARD', KEYS[1])
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if verdict == 2 then
    if oldest[2] then reset = tonumber(oldest[2]) + window - now end
    return {2, math.max(0, limit - used), reset, now, seen[2], seen[3]}
  end
  if used >= limit then
    return {0, 0, tonumber(oldest[2]) + window - now, now, '', ''}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  remaining = limit - used - 1
  oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  reset = tonumber(oldest[2]) + window - now
elseif verdict == 2 then
  return {2, -1, 0, now, seen[2], seen[3]}
end
if verdict == 3 or ARGV[5] ~= '1' then return {verdict, remaining, reset, now, '', ''} end
redis.call('HSET', KEYS[2], 'user_id', ARGV[6], 'operation', ARGV[7],
           'status', 'queued', 'accepted_at_us', now, 'attempts', 0)
if ARGV[13] ~= '' then
  redis.call('HSET', KEYS[2], 'callback', ARGV[13], 'callback_lane', ARGV[14])
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[8]))
redis.call('ZADD', KEYS[5], now, ARGV[4])
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[8]))
redis.call('LPUSH', KEYS[4], ARGV[11] .. string.format('%.0f', now) .. ARGV[12])
if KEYS[3] ~= '' then
  redis.call('HSET', KEYS[3], 'fingerprint', ARGV[9], 'job_id', ARGV[4], 'operation', ARGV[7])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[10]))
end
return {1, remaining, reset, now, '', ''}
