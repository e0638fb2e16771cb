#!lua flags=no-writes
-- Admission while Redis is over maxmemory, where admit.lua is refused before it runs:
-- reads only (a no-writes script runs whatever the memory), and admits nothing. A
-- repeat of a request accepted under its Idempotency-Key is still answered with its
-- original job; any other request is shed, or refused as admit.lua would refuse it
-- (the key used for other content, the user over the limit), without being counted.
--
-- KEYS[1] the user's window (sorted set)   KEYS[2] the idempotency record, or ''
-- ARGV[1] '1' if a limit applies   ARGV[2] limit   ARGV[3] window in microseconds
-- ARGV[4] the request's fingerprint
-- Returns what admit.lua returns; verdict 2 a replay, 3 the key was used for other
-- content, 0 over the limit, 4 shed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local verdict = 4
local seen = {}
if KEYS[2] ~= '' then
  seen = redis.call('HMGET', KEYS[2], 'fingerprint', 'job_id', 'operation')
  if seen[1] then
    verdict = seen[1] == ARGV[4] and 2 or 3
  end
end
local remaining = -1
local reset = 0
if ARGV[1] == '1' then
  local limit = tonumber(ARGV[2])
  local since = '(' .. string.format('%.0f', now - tonumber(ARGV[3]))
  local used = redis.call('ZCOUNT', KEYS[1], since, '+inf')
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if oldest[2] then reset = tonumber(oldest[2]) + tonumber(ARGV[3]) - now end
  remaining = math.max(0, limit - used)
  if verdict ~= 2 and used >= limit then verdict = 0 end
end
if verdict == 2 then return {2, remaining, reset, now, seen[2], seen[3]} end
return {verdict, remaining, reset, now, '', ''}
