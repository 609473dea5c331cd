-- gpjobs schema v3: the GP task a job was submitted to (TrainDeepLearningModel or one of the inference tasks).
-- Every job stored before this version trained, hence the default.
ALTER TABLE jobs ADD COLUMN task TEXT NOT NULL DEFAULT 'TrainDeepLearningModel';
