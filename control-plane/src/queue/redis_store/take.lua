-- Up to ARGV[20] deliveries for consumer ARGV[18]: highest (aged) level
-- first, FIFO within a level, at least priority ARGV[19], only the types
-- in ARGV[22..] when given; a key with a delivery in flight waits when
-- the queue orders by key. Returns {deadline, {{id, stored, deliveries,
-- last error}...}}.
--
-- ARGV[21] is the consumer's take number. The ids of its last take are
-- kept under :took; a take with the same number again (the caller lost
-- the reply: Redis died after running the script) answers with those
-- still in flight to the consumer instead of taking more, so a lost
-- reply never strands deliveries until their ack timeout.
local b = KEYS[1]
local now = num(ARGV[2])
local S = settings(3)
local consumer, minp, max, take_no = ARGV[18], num(ARGV[19]), num(ARGV[20]), ARGV[21]
local kinds = nil
if #ARGV > 21 then
  kinds = {}
  for i = 22, #ARGV do kinds[ARGV[i]] = true end
end

local function entry(id)
  return { id, redis.call('HGET', b .. ':msg', id), num(redis.call('HGET', b .. ':cnt', id)),
    redis.call('HGET', b .. ':err', id) or '' }
end

local last = redis.call('HGET', b .. ':took', consumer)
if last then
  local sep = string.find(last, '|', 1, true)
  if sep and string.sub(last, 1, sep - 1) == take_no then
    local out, deadline = {}, now + S.ack
    for id in string.gmatch(string.sub(last, sep + 1), '[^,]+') do
      if redis.call('HGET', b .. ':own', id) == consumer then
        deadline = num(redis.call('ZSCORE', b .. ':fly', id))
        out[#out + 1] = entry(id)
      end
    end
    return { deadline, out }
  end
end
due(b, now)

local function candidate(p)
  local off = 0
  while off < SCAN do
    local ids = redis.call('ZRANGE', b .. ':r' .. p, off, off + 15, 'WITHSCORES')
    if #ids == 0 then return nil end
    for i = 1, #ids, 2 do
      local id = ids[i]
      local m = meta(b, id)
      if m and (not kinds or kinds[m[3]])
        and not (S.by_key and m[4] ~= '' and redis.call('SISMEMBER', b .. ':busy', m[4]) == 1) then
        return id, m, tonumber(ids[i + 1]) / 1024
      end
    end
    off = off + 16
  end
  return nil
end

local deadline = now + S.ack
local out = {}

-- Without type filters, key order or aging the pick is the first ready
-- messages of the highest levels, taken and placed in a few multi-member
-- commands (one AOF entry each rather than several per delivery).
local function take_plain()
  local ids, need = {}, max
  for p = 9, minp, -1 do
    if need <= 0 then break end
    if S.prio or p == 4 then
      local level = redis.call('ZRANGE', b .. ':r' .. p, 0, need - 1)
      if #level > 0 then
        redis.call('ZREM', b .. ':r' .. p, unpack(level))
        for _, id in ipairs(level) do ids[#ids + 1] = id end
        need = need - #level
      end
    end
  end
  if #ids == 0 then return end
  -- A ready id whose message is gone (never expected) is dropped here.
  local metas = redis.call('HMGET', b .. ':meta', unpack(ids))
  local taken, fly, own = {}, {}, {}
  for j, id in ipairs(ids) do
    if metas[j] then
      taken[#taken + 1] = id
      fly[#fly + 1] = fmt(deadline)
      fly[#fly + 1] = id
      own[#own + 1] = id
      own[#own + 1] = consumer
    end
  end
  if #taken == 0 then return end
  redis.call('ZADD', b .. ':fly', unpack(fly))
  redis.call('HSET', b .. ':own', unpack(own))
  local counts = {}
  for j, id in ipairs(taken) do counts[j] = redis.call('HINCRBY', b .. ':cnt', id, 1) end
  local bodies = redis.call('HMGET', b .. ':msg', unpack(taken))
  local errors = redis.call('HMGET', b .. ':err', unpack(taken))
  for j, id in ipairs(taken) do
    out[#out + 1] = { id, bodies[j], counts[j], errors[j] or '' }
  end
end

local plain = not kinds and not S.by_key and not (S.prio and S.aging > 0)
if plain then take_plain() end
for _ = 1, (plain and 0 or max) do
  local best, bestp, bestm, besteff, bestsince = nil, nil, nil, nil, nil
  for p = 9, minp, -1 do
    if S.prio or p == 4 then
      local id, m, since = candidate(p)
      if id then
        local aged = 0
        if S.aging > 0 then aged = math.max(0, math.floor(((now - EPOCH) - since) / S.aging)) end
        local eff = p + aged
        if not best or eff > besteff or (eff == besteff and since < bestsince) then
          best, bestp, bestm, besteff, bestsince = id, p, m, eff, since
        end
        if S.aging <= 0 then break end
      end
    end
  end
  if not best then break end
  redis.call('ZREM', b .. ':r' .. bestp, best)
  redis.call('ZADD', b .. ':fly', fmt(deadline), best)
  redis.call('HSET', b .. ':own', best, consumer)
  redis.call('HINCRBY', b .. ':cnt', best, 1)
  if S.by_key and bestm[4] ~= '' then redis.call('SADD', b .. ':busy', bestm[4]) end
  out[#out + 1] = entry(best)
end
if #out > 0 then
  local ids = {}
  for i, d in ipairs(out) do ids[i] = d[1] end
  redis.call('HSET', b .. ':took', consumer, take_no .. '|' .. table.concat(ids, ','))
else
  -- An empty take writes nothing (no AOF entry per idle poll).
  redis.call('HDEL', b .. ':took', consumer)
end
return { deadline, out }
