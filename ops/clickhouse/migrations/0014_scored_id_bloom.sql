-- A bloom filter over scored ids. For every batch the worker looks its ids up here (a reused id
-- with other content is refused; streams/clickhouse/store.py, existing_content_hashes), and most
-- ids are new: the filter lets the read skip the granules that cannot hold them instead of reading
-- one per id and part, a cost that grew with the table (benchmarks.duplicate_lookup). Modern
-- servers only: 18.16 has data-skipping indices only behind an experimental setting. Parts written
-- before this migration get the index from the MATERIALIZE mutation, in the background.
--@modern ALTER TABLE ${db}.scored ADD INDEX IF NOT EXISTS id_bloom id TYPE bloom_filter(0.0001) GRANULARITY 1
;
--@modern ALTER TABLE ${db}.scored MATERIALIZE INDEX id_bloom
;
