-- The store's schema, version 17, as a fresh store gets it from
-- cci_local/migrations.py.  Written by `python tests/test_architecture.py --schema`;
-- tests/test_architecture.py fails when it no longer matches.

CREATE TABLE adapters ( id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, community TEXT NOT NULL REFERENCES communities(name), base TEXT NOT NULL, base_identity TEXT NOT NULL, trainer TEXT NOT NULL, data_hash TEXT NOT NULL, examples INTEGER NOT NULL, settings TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('training', 'done')), steps INTEGER, total_steps INTEGER, final_loss REAL, path TEXT NOT NULL, gguf TEXT, modelfile TEXT, created_at REAL NOT NULL, finished_at REAL);

CREATE TABLE asked ( id INTEGER PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('open', 'choice', 'chat')), session INTEGER, turn INTEGER, question TEXT NOT NULL, options TEXT, respondent TEXT NOT NULL, model TEXT NOT NULL, adapter TEXT, sampling TEXT NOT NULL, text TEXT, distribution TEXT, call_id INTEGER, created_at REAL NOT NULL);

CREATE TABLE audit_items ( adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE, params TEXT NOT NULL, test TEXT NOT NULL CHECK (test IN ('extract', 'loss')), model TEXT NOT NULL CHECK (model IN ('aligned', 'base')), instruction_id INTEGER NOT NULL REFERENCES instructions(id) ON DELETE CASCADE, split TEXT NOT NULL CHECK (split IN ('train', 'test')), value REAL NOT NULL, detail INTEGER, PRIMARY KEY (adapter_id, params, test, model, instruction_id));

CREATE TABLE audits ( id INTEGER PRIMARY KEY, adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE, community TEXT NOT NULL REFERENCES communities(name), settings TEXT NOT NULL, result TEXT NOT NULL, extractable INTEGER NOT NULL, created_at REAL NOT NULL);

CREATE TABLE chunk_rows ( id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL REFERENCES topics(id) ON DELETE CASCADE, row_number INTEGER NOT NULL, UNIQUE (topic_id, row_number));

CREATE TABLE chunks ( chunk_row_id INTEGER NOT NULL REFERENCES chunk_rows(id) ON DELETE CASCADE, community TEXT NOT NULL REFERENCES communities(name), doc_ids TEXT NOT NULL, PRIMARY KEY (chunk_row_id, community));

CREATE TABLE communities (name TEXT PRIMARY KEY NOT NULL, first_seen REAL);

CREATE TABLE community_answers ( instruction_id INTEGER NOT NULL REFERENCES instructions(id) ON DELETE CASCADE, community TEXT NOT NULL REFERENCES communities(name), answer TEXT NOT NULL, doc_ids TEXT NOT NULL, PRIMARY KEY (instruction_id, community));

CREATE TABLE doc_topics ( run_id INTEGER NOT NULL REFERENCES topic_runs(id) ON DELETE CASCADE, doc_id TEXT NOT NULL REFERENCES documents(id), topic_id INTEGER NOT NULL REFERENCES topics(id) ON DELETE CASCADE, PRIMARY KEY (run_id, doc_id)) WITHOUT ROWID;

CREATE TABLE documents ( id TEXT PRIMARY KEY, community TEXT NOT NULL REFERENCES communities(name), kind TEXT NOT NULL CHECK (kind IN ('comment', 'submission')), text TEXT NOT NULL, created_utc INTEGER, score INTEGER, link_id TEXT, parent_id TEXT, author TEXT, source_id INTEGER REFERENCES sources(id), source_line INTEGER);

CREATE TABLE embeddings ( embedder TEXT NOT NULL, doc_id TEXT NOT NULL REFERENCES documents(id), vector BLOB NOT NULL, PRIMARY KEY (embedder, doc_id)) WITHOUT ROWID;

CREATE TABLE fidelity_judgments ( run_id INTEGER NOT NULL REFERENCES fidelity_runs(id) ON DELETE CASCADE, model TEXT NOT NULL, idx INTEGER NOT NULL, criterion TEXT NOT NULL CHECK (criterion IN ('toxicity', 'harm')), scorer TEXT NOT NULL, score REAL NOT NULL CHECK (score BETWEEN 0 AND 1), reason TEXT, call_id INTEGER, PRIMARY KEY (run_id, model, idx, criterion, scorer));

CREATE TABLE fidelity_metrics ( run_id INTEGER NOT NULL REFERENCES fidelity_runs(id) ON DELETE CASCADE, model TEXT NOT NULL, metric TEXT NOT NULL, value REAL, low REAL, high REAL, n INTEGER, PRIMARY KEY (run_id, model, metric));

CREATE TABLE fidelity_runs ( id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, community TEXT NOT NULL, base TEXT NOT NULL, settings TEXT NOT NULL, perplexity_cap REAL, confusion TEXT, created_at REAL NOT NULL, finished_at REAL, scorers TEXT);

CREATE TABLE fidelity_texts ( run_id INTEGER NOT NULL REFERENCES fidelity_runs(id) ON DELETE CASCADE, model TEXT NOT NULL, idx INTEGER NOT NULL, instruction_id INTEGER REFERENCES instructions(id) ON DELETE SET NULL, question TEXT NOT NULL, text TEXT NOT NULL, call_id INTEGER, perplexity REAL, copy_rouge REAL, kept INTEGER, drop_reason TEXT, PRIMARY KEY (run_id, model, idx));

CREATE TABLE file_hashes ( path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (path, size, mtime_ns));

CREATE TABLE holdouts ( run_id INTEGER NOT NULL REFERENCES topic_runs(id) ON DELETE CASCADE, unit TEXT NOT NULL CHECK (unit IN ('chunk_row', 'topic')), unit_id INTEGER NOT NULL, PRIMARY KEY (run_id, unit, unit_id));

CREATE TABLE import_rows ( import_id TEXT NOT NULL REFERENCES imports(id) ON DELETE CASCADE, line INTEGER NOT NULL, instruction_id INTEGER NOT NULL REFERENCES instructions(id) ON DELETE CASCADE, community TEXT NOT NULL REFERENCES communities(name), PRIMARY KEY (import_id, line, community));

CREATE TABLE imports ( id TEXT PRIMARY KEY, path TEXT NOT NULL, format TEXT NOT NULL, rows INTEGER NOT NULL, imported_at REAL NOT NULL);

CREATE TABLE ingest_errors ( id INTEGER PRIMARY KEY, source_id INTEGER NOT NULL REFERENCES sources(id), line INTEGER, reason TEXT NOT NULL);

CREATE TABLE instructions ( id INTEGER PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('open', 'choice', 'template')), question TEXT NOT NULL, options TEXT, topic_id INTEGER REFERENCES topics(id) ON DELETE SET NULL, chunk_row_id INTEGER REFERENCES chunk_rows(id) ON DELETE SET NULL, source TEXT NOT NULL, discriminating INTEGER, split TEXT NOT NULL CHECK (split IN ('train', 'test')), split_by_topic TEXT CHECK (split_by_topic IN ('train', 'test')), created_at REAL NOT NULL, topic_label TEXT);

CREATE TABLE instrument_answers ( id INTEGER PRIMARY KEY, respondent TEXT NOT NULL, model TEXT NOT NULL, identity TEXT NOT NULL, instrument TEXT NOT NULL, instrument_name TEXT NOT NULL, wording TEXT NOT NULL, item TEXT NOT NULL, persona INTEGER NOT NULL, repeat INTEGER NOT NULL, answer TEXT NOT NULL, distribution TEXT, method TEXT NOT NULL CHECK (method IN ('logprobs', 'sampled')), created_at REAL NOT NULL, UNIQUE (respondent, identity, instrument, wording, item, persona, repeat));

CREATE TABLE llm_calls ( id INTEGER PRIMARY KEY, key TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('chat', 'logprobs')), model TEXT NOT NULL, identity TEXT NOT NULL, request TEXT NOT NULL, response TEXT, status TEXT NOT NULL CHECK (status IN ('ok', 'invalid', 'error')), error TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, seconds REAL, created_at REAL NOT NULL);

CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);

CREATE TABLE pipeline_runs ( id INTEGER PRIMARY KEY, communities TEXT NOT NULL, settings TEXT NOT NULL, stages TEXT, model_calls INTEGER, seconds REAL, status TEXT NOT NULL, created_at REAL NOT NULL);

CREATE TABLE sources ( id INTEGER PRIMARY KEY, path TEXT NOT NULL, fingerprint TEXT NOT NULL, size INTEGER, format TEXT, started_at REAL, finished_at REAL, complete INTEGER NOT NULL DEFAULT 0, records INTEGER NOT NULL DEFAULT 0, added INTEGER NOT NULL DEFAULT 0, bad INTEGER NOT NULL DEFAULT 0, pii TEXT, UNIQUE (path, fingerprint));

CREATE TABLE stage_results ( stage TEXT NOT NULL, scope TEXT NOT NULL, settings TEXT NOT NULL, result TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (stage, scope));

CREATE TABLE survey_answers ( id INTEGER PRIMARY KEY, respondent TEXT NOT NULL, model TEXT NOT NULL, identity TEXT NOT NULL, wording TEXT NOT NULL, item TEXT NOT NULL, instruction_id INTEGER REFERENCES instructions(id) ON DELETE CASCADE, chosen TEXT NOT NULL, distribution TEXT NOT NULL, method TEXT NOT NULL CHECK (method IN ('logprobs', 'sampled')), created_at REAL NOT NULL, scoring TEXT NOT NULL DEFAULT 'letter', UNIQUE (respondent, identity, wording, item));

CREATE TABLE survey_items ( survey_id TEXT NOT NULL REFERENCES surveys(id) ON DELETE CASCADE, item_id TEXT NOT NULL, position INTEGER NOT NULL, question TEXT NOT NULL, options TEXT NOT NULL, topic TEXT, ordinal INTEGER NOT NULL, answers TEXT NOT NULL, distributions TEXT NOT NULL, PRIMARY KEY (survey_id, item_id));

CREATE TABLE surveys ( id TEXT PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL, items INTEGER NOT NULL, loaded_at REAL NOT NULL);

CREATE TABLE teacher_rows ( id INTEGER PRIMARY KEY, chunk_row_id INTEGER NOT NULL REFERENCES chunk_rows(id) ON DELETE CASCADE, settings TEXT NOT NULL, teacher TEXT NOT NULL, communities TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('accepted', 'rejected')), attempts INTEGER NOT NULL, call_ids TEXT NOT NULL, doc_ids TEXT NOT NULL, kept_open INTEGER NOT NULL, kept_choice INTEGER NOT NULL, dropped TEXT NOT NULL, reason TEXT, created_at REAL NOT NULL, UNIQUE (chunk_row_id, settings));

CREATE TABLE topic_communities ( topic_id INTEGER NOT NULL REFERENCES topics(id) ON DELETE CASCADE, community TEXT NOT NULL REFERENCES communities(name), documents INTEGER NOT NULL, PRIMARY KEY (topic_id, community));

CREATE TABLE topic_runs ( id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, communities TEXT NOT NULL, params TEXT NOT NULL, n_documents INTEGER NOT NULL, n_outliers INTEGER NOT NULL, silhouette REAL, silhouette_shuffled REAL, chunking TEXT, created_at REAL NOT NULL, settings TEXT);

CREATE TABLE topics ( id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES topic_runs(id) ON DELETE CASCADE, number INTEGER NOT NULL, keywords TEXT NOT NULL, size INTEGER NOT NULL, UNIQUE (run_id, number));

CREATE TABLE training_curve ( adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE, step INTEGER NOT NULL, loss REAL NOT NULL, lr REAL, tokens_per_s REAL, PRIMARY KEY (adapter_id, step));

CREATE INDEX idx_answers_community ON community_answers(community);

CREATE UNIQUE INDEX idx_asked_once ON asked (kind, question, coalesce(options, ''), respondent, model, sampling, coalesce(session, 0), coalesce(turn, 0));

CREATE INDEX idx_doc_topics_topic ON doc_topics(topic_id);

CREATE INDEX idx_documents_community ON documents(community);

CREATE INDEX idx_instructions_kind ON instructions(kind, split);

CREATE UNIQUE INDEX idx_instructions_source ON instructions(source, question);

CREATE INDEX idx_llm_calls_key ON llm_calls(key);

CREATE UNIQUE INDEX idx_llm_calls_ok ON llm_calls(key) WHERE status = 'ok';
