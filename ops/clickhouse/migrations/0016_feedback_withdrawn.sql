-- A label its annotator took back (undo in the labelling UI). The withdrawal is the correction's
-- latest version (same correction_id), so FINAL reads it in the label's place, and every reader
-- of labels (retraining, agreement, the audited-error history) leaves it out. 0: a label.
ALTER TABLE ${db}.feedback ADD COLUMN withdrawn UInt8 DEFAULT 0
;
