-- Moves a queue's clock: due messages become ready, overdue deliveries
-- come back (or leave when their deliveries are used up), expired queued
-- messages leave (dead-lettered or dropped: ARGV[18] is the reason).
-- Returns {made ready, dropped, expired, leaving, next wake-up or -1}.
local b = KEYS[1]
local now = num(ARGV[2])
local S = settings(3)
local expired_reason = ARGV[18]
local made = due(b, now)
local dropped, expired = 0, 0
local overdue = redis.call('ZRANGEBYSCORE', b .. ':fly', '-inf', fmt(now), 'LIMIT', 0, 1000)
for _, id in ipairs(overdue) do
  local r = failed(b, S, id, now, true, 'not acknowledged within the ack timeout')
  if r == 'requeued' then made = made + 1 end
  if r == 'dropped' then dropped = dropped + 1 end
end
local old = redis.call('ZRANGEBYSCORE', b .. ':exp', '-inf', fmt(now), 'LIMIT', 0, 1000)
for _, id in ipairs(old) do
  redis.call('ZREM', b .. ':exp', id)
  -- In flight: the consumer may still finish; expiry waits.
  if not redis.call('ZSCORE', b .. ':fly', id) and redis.call('HEXISTS', b .. ':leave', id) == 0 then
    local m = meta(b, id)
    if m then
      unplace(b, id, m)
      expired = expired + 1
      if S.exp_dl then
        if leave(b, S, id, expired_reason) == 'dropped' then dropped = dropped + 1 end
      else
        erase(b, id)
        dropped = dropped + 1
      end
    end
  end
end
if made > 0 then wake(b) end
local next = -1
for _, k in ipairs({ ':wait', ':fly', ':exp' }) do
  local first = redis.call('ZRANGE', b .. k, 0, 0, 'WITHSCORES')
  if #first > 0 then
    local t = tonumber(first[2])
    if next < 0 or t < next then next = t end
  end
end
return { made, dropped, expired, redis.call('HLEN', b .. ':leave'), next }
