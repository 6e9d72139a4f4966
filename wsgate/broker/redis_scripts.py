"""The Lua scripts of the Redis broker: each runs atomically inside Redis.

Numbering (INCR + history + PUBLISH), replay for resumes, and presence entries scored
by their expiry on Redis's own clock.
"""

from __future__ import annotations

__all__ = ["CLAIM", "KEEP", "LIVE", "NUMBERED", "REPLAY"]

# INCR, append to the capped history, PUBLISH: one atomic step, so every subscriber
# sees the numbers of a channel in increasing order, whichever instance published.
# The epoch (KEYS[3]) is set only if absent: a subscriber that joined the channel before
# its first message was given the epoch its ids will belong to. All three keys live and
# die together, so a lost counter always comes with a new epoch.
NUMBERED = """
local n = redis.call('INCR', KEYS[1])
local payload = ARGV[1] .. string.format('%d', n) .. ARGV[2]
local keep = tonumber(ARGV[3])
if keep > 0 then
  redis.call('RPUSH', KEYS[2], payload)
  redis.call('LTRIM', KEYS[2], -keep, -1)
end
redis.call('SET', KEYS[3], ARGV[6], 'NX')
local keep_for = tonumber(ARGV[5])
if keep_for > 0 then
  redis.call('PEXPIRE', KEYS[1], keep_for)
  redis.call('PEXPIRE', KEYS[2], keep_for)
  redis.call('PEXPIRE', KEYS[3], keep_for)
else
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', KEYS[3])
end
redis.call('PUBLISH', ARGV[4], payload)
return n
"""

# Epoch (created if absent), latest id, and the payloads after ARGV[1] when the client's
# epoch (ARGV[2]) matches and all of them are kept, else the last ARGV[3]: one atomic read.
# With ARGV[6] > 0, what is returned adds up to at most that many bytes: the payloads are
# read newest first, a chunk at a time, and reading stops once the budget is spent. A
# resume whose missed payloads exceed it is not recovered; the last ARGV[3] are then
# only the newest that fit. So one resume costs at most the budget, however much is kept.
REPLAY = """
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[4]
  local keep_for = tonumber(ARGV[5])
  if keep_for > 0 then
    redis.call('SET', KEYS[3], epoch, 'PX', keep_for)
  else
    redis.call('SET', KEYS[3], epoch)
  end
end
local budget = tonumber(ARGV[6])
-- The newest payloads, at most count of them and within the budget, oldest first;
-- and whether all count fitted.
local function newest(count)
  if count <= 0 then
    return {}, true
  end
  if budget <= 0 then
    return redis.call('LRANGE', KEYS[2], -count, -1), true
  end
  local taken, size, stop, fits = {}, 0, -1, true
  while #taken < count do
    local start = math.max(stop - 31, -count)
    local chunk = redis.call('LRANGE', KEYS[2], start, stop)
    if #chunk == 0 then
      break
    end
    for i = #chunk, 1, -1 do
      size = size + #chunk[i]
      if size > budget then
        fits = false
        break
      end
      taken[#taken + 1] = chunk[i]
    end
    if not fits then
      break
    end
    stop = start - 1
  end
  local ordered = {}
  for i = #taken, 1, -1 do
    ordered[#ordered + 1] = taken[i]
  end
  return ordered, fits
end
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local len = redis.call('LLEN', KEYS[2])
local since = tonumber(ARGV[1])
if since >= 0 and ARGV[2] == epoch and since <= n and since + 1 >= n - len + 1 then
  local missed, fits = newest(n - since)
  if fits then
    return {epoch, n, 1, missed}
  end
end
local last = newest(tonumber(ARGV[3]))
return {epoch, n, 0, last}
"""

# Presence: one sorted set per key, each member scored by its expiry in ms on Redis's
# clock. A member whose score has passed is expired: absent for claim, hold and members,
# and removed (once) by the reaping script. The key outlives its newest expiry by a ttl,
# which leaves the survivors time to reap the members of an instance that died.
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# ARGV: member, ttl (ms), '1' to claim (add unless live) or '0' to hold (extend if live).
CLAIM = _NOW + """
local ttl = tonumber(ARGV[2])
local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
local live = score ~= nil and score > now
if live == (ARGV[3] == '1') then
  return 0
end
local want = now + ttl
if score == nil or score < want then
  redis.call('ZADD', KEYS[1], string.format('%d', want), ARGV[1])
end
if redis.call('PTTL', KEYS[1]) < 2 * ttl then
  redis.call('PEXPIRE', KEYS[1], 2 * ttl)
end
return 1
"""

# ARGV: '1' to reap, '1' to put back absent members, then member, ttl (ms) pairs held by
# the caller. Those are pushed to ttl from now; absent ones are left out unless putting
# back, since a release may have removed them after the caller listed them. With
# reaping, the expired members are then removed. Returns {absent held members, reaped...}.
KEEP = _NOW + """
local absent, longest = 0, 0
for i = 3, #ARGV, 2 do
  local ttl = tonumber(ARGV[i + 1])
  local want = now + ttl
  local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]))
  if score == nil then
    absent = absent + 1
  end
  if (score == nil and ARGV[2] == '1') or (score ~= nil and score < want) then
    redis.call('ZADD', KEYS[1], string.format('%d', want), ARGV[i])
    if ttl > longest then
      longest = ttl
    end
  end
end
if longest > 0 and redis.call('PTTL', KEYS[1]) < 2 * longest then
  redis.call('PEXPIRE', KEYS[1], 2 * longest)
end
local result = {absent}
if ARGV[1] == '1' then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    for _, member in ipairs(gone) do
      result[#result + 1] = member
    end
  end
end
return result
"""

LIVE = _NOW + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now), '+inf')
"""
