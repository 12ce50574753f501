-- The reason each replayed letter had been refused for. A letter with the same bytes refused again
-- for that reason, after the replay, is the replay coming back (its cause is not fixed yet): a later
-- `vigil dead-letters replay` leaves it alone unless told to send it again (--again), so that runs
-- do not send the same bytes, and add a letter, every time. '': replayed before this column existed.
ALTER TABLE ${db}.dead_letter_replays ADD COLUMN reason ${LowCardString} DEFAULT ''
;
