-- add_figures: a job's figures for the metrics (its generation's time and speed, a cold
-- load), added once: queued just before the job's `finish` in one transaction, it adds nothing
-- to a job that has ended already (a second delivery of the same result).
-- KEYS[1] the job's hash
-- KEYS[2..] the hashes the figures go to
-- ARGV[1..] triples: the index in KEYS of a figure's hash, its field, the amount to add
-- Returns 1 if the figures were added, 0 if the job had already ended.
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == DONE or state == REJECTED or state == DEAD then return 0 end
for index = 1, #ARGV, 3 do
  redis.call('HINCRBYFLOAT', KEYS[tonumber(ARGV[index])], ARGV[index + 1], ARGV[index + 2])
end
return 1
