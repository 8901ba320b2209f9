-- Admits messages into every target queue (KEYS: one base per target; a
-- pubsub topic's subscriptions share one hash tag) with the ids the caller
-- allocated: all targets or none. ARGV[18]: message count; then per
-- message: id, priority, payload bytes, type, key, deliver_at, expires,
-- marker, source, and one stored form per target. A marker makes a move
-- (dead letter, redrive) idempotent: a second publish with it is
-- answered as deduplicated. Returns {{code, id or reason}...}, dropped:
-- code 0 enqueued, 1 deduplicated, 2 refused; or 'ids-taken'.
local now = num(ARGV[2])
local S = settings(3)
local nt = #KEYS
local first = KEYS[1]
local res = {}
local woke = {}
local dropped = 0
local i = 19

-- What this call admits, per target, written in a few multi-member
-- commands (one AOF entry each rather than several per message) when the
-- call ends, or before a drop needs to see it.
local FLUSH_AT = 500
local pend, last = {}, {}
local function fresh()
  return { n = 0, bytes = 0, msg = {}, meta = {}, all = {}, pos = {}, ready = {}, exp = {}, wait = {} }
end
for t = 1, nt do
  pend[t] = fresh()
  last[t] = tonumber(redis.call('GET', KEYS[t] .. ':last') or '0')
end

local function flush(t)
  local b, w = KEYS[t], pend[t]
  if w.n == 0 then return end
  redis.call('HSET', b .. ':msg', unpack(w.msg))
  redis.call('HSET', b .. ':meta', unpack(w.meta))
  redis.call('ZADD', b .. ':all', unpack(w.all))
  redis.call('INCRBY', b .. ':bytes', w.bytes)
  if #w.pos > 0 then
    redis.call('HSET', b .. ':pos', unpack(w.pos))
    redis.call('SET', b .. ':last', fmt(last[t]))
  end
  for p, r in pairs(w.ready) do redis.call('ZADD', b .. ':r' .. p, unpack(r)) end
  if #w.exp > 0 then redis.call('ZADD', b .. ':exp', unpack(w.exp)) end
  if #w.wait > 0 then redis.call('ZADD', b .. ':wait', unpack(w.wait)) end
  pend[t] = fresh()
end

local function push(list, a, b2)
  list[#list + 1] = a
  list[#list + 1] = b2
end

local function over(t, size)
  if S.max_msgs == 0 and S.max_bytes == 0 then return false end
  local b, w = KEYS[t], pend[t]
  local count = redis.call('ZCARD', b .. ':all') + w.n + 1
  local bytes = num(redis.call('GET', b .. ':bytes')) + w.bytes + size
  return (S.max_msgs > 0 and count > S.max_msgs) or (S.max_bytes > 0 and bytes > S.max_bytes)
end

local function full(t)
  flush(t)
  local b = KEYS[t]
  local why = 'queue full: ' .. redis.call('ZCARD', b .. ':all') .. ' messages, '
    .. num(redis.call('GET', b .. ':bytes')) .. ' bytes (maxSize ' .. S.max_msgs .. ' messages, '
    .. S.max_bytes .. ' bytes)'
  if nt > 1 then why = 'subscription ' .. string.match(qname(b), '[^/]*$') .. ': ' .. why end
  return why
end

-- Drops the oldest queued (not in flight, not leaving) message.
local function drop_oldest(t)
  flush(t)
  local b = KEYS[t]
  local ids = redis.call('ZRANGE', b .. ':all', 0, 63)
  for _, id in ipairs(ids) do
    if not redis.call('ZSCORE', b .. ':fly', id) and redis.call('HEXISTS', b .. ':leave', id) == 0 then
      erase(b, id)
      dropped = dropped + 1
      return true
    end
  end
  return false
end

-- Ids reserved before Redis lost writes (a restart under a weaker
-- appendfsync than always) may name stored messages: nothing is written
-- and the caller reserves new ones.
do
  local j = 19
  for _ = 1, num(ARGV[18]) do
    for t = 1, nt do
      if redis.call('HEXISTS', KEYS[t] .. ':msg', ARGV[j]) == 1 then return 'ids-taken' end
    end
    j = j + 9 + nt
  end
end

local stamp = fmt(now)
for _ = 1, num(ARGV[18]) do
  local id, p, size, kind, key = ARGV[i], num(ARGV[i + 1]), num(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4]
  local deliver_at, expires, marker, src = num(ARGV[i + 5]), num(ARGV[i + 6]), ARGV[i + 7], ARGV[i + 8]
  local blobs = i + 9
  i = i + 9 + nt
  local verdict = nil
  if marker ~= '' then
    local had = redis.call('GET', first .. ':mk:' .. marker)
    if had then verdict = { 1, had } end
  end
  if not verdict and S.dedup > 0 and key ~= '' then
    local had = redis.call('GET', first .. ':dd:' .. key)
    if had then verdict = { 1, had } end
  end
  if not verdict and not S.drop_oldest then
    for t = 1, nt do
      if over(t, size) then
        verdict = { 2, full(t) }
        break
      end
    end
  end
  if not verdict and S.drop_oldest then
    for t = 1, nt do
      while over(t, size) do
        if not drop_oldest(t) then
          verdict = { 2, full(t) }
          break
        end
      end
      if verdict then break end
    end
  end
  if not verdict then
    local m = cmsgpack.pack({ p, size, kind, key, src })
    for t = 1, nt do
      local w = pend[t]
      w.n = w.n + 1
      w.bytes = w.bytes + size
      push(w.msg, id, ARGV[blobs + t - 1])
      push(w.meta, id, m)
      push(w.all, stamp, id)
      if expires > 0 then push(w.exp, fmt(expires), id) end
      if deliver_at > now then
        push(w.wait, fmt(deliver_at), id)
      else
        -- Into its level after everything already there (make_ready for
        -- a message never placed before).
        local sc = fmt(math.max((now - EPOCH) * 1024, last[t] + 1))
        last[t] = tonumber(sc)
        push(w.pos, id, sc)
        w.ready[p] = w.ready[p] or {}
        push(w.ready[p], sc, id)
        woke[t] = true
      end
      if w.n >= FLUSH_AT then flush(t) end
    end
    if S.dedup > 0 and key ~= '' then
      redis.call('SET', first .. ':dd:' .. key, id, 'PX', S.dedup)
    end
    if marker ~= '' then
      redis.call('SET', first .. ':mk:' .. marker, id, 'PX', 604800000)
    end
    verdict = { 0, id }
  end
  res[#res + 1] = verdict
end
for t = 1, nt do
  flush(t)
  if woke[t] then wake(KEYS[t]) end
end
return { res, dropped }
