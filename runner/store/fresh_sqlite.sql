CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

CREATE TABLE file_digests (
	path TEXT NOT NULL, 
	size_bytes BIGINT NOT NULL, 
	mtime_ns BIGINT NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	CONSTRAINT pk_file_digests PRIMARY KEY (path)
);

CREATE TABLE jobs (
	"key" VARCHAR(64) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	image_path TEXT NOT NULL, 
	mask_path TEXT, 
	image_sha256 VARCHAR(64), 
	mask_sha256 VARCHAR(64), 
	prompt TEXT NOT NULL, 
	provider VARCHAR(100) NOT NULL, 
	model VARCHAR(200) NOT NULL, 
	params_json TEXT NOT NULL, 
	output_name TEXT NOT NULL, 
	manifest_entry INTEGER NOT NULL, 
	attempt_floor INTEGER NOT NULL, 
	error TEXT, 
	lease_owner VARCHAR(64), 
	lease_expires_at DATETIME, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	finished_at DATETIME, retry_floor INTEGER DEFAULT '0' NOT NULL, failure_kind VARCHAR(16), price_id INTEGER CONSTRAINT fk_jobs_price_id_prices REFERENCES prices (id), output_folder_id INTEGER CONSTRAINT fk_jobs_output_folder_id_folders REFERENCES folders (id), 
	CONSTRAINT pk_jobs PRIMARY KEY ("key")
);

CREATE TABLE runs (
	id VARCHAR(64) NOT NULL, 
	manifest TEXT NOT NULL, 
	host VARCHAR(255) NOT NULL, 
	pid INTEGER NOT NULL, 
	process_tag VARCHAR(100) NOT NULL, 
	started_at DATETIME NOT NULL, 
	heartbeat_at DATETIME NOT NULL, 
	ended_at DATETIME, 
	exit_code INTEGER, 
	stop_reason TEXT, reserved_usd FLOAT DEFAULT '0' NOT NULL, 
	CONSTRAINT pk_runs PRIMARY KEY (id)
);

CREATE TABLE attempts (
	id INTEGER NOT NULL, 
	job_key VARCHAR(64) NOT NULL, 
	run_id VARCHAR(64) NOT NULL, 
	provider VARCHAR(100) NOT NULL, 
	model VARCHAR(200) NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	counted BOOLEAN NOT NULL, 
	started_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	latency_ms INTEGER, 
	http_status INTEGER, 
	error_code VARCHAR(200), 
	error_message TEXT, 
	request_id VARCHAR(200), 
	input_tokens BIGINT, 
	input_image_tokens BIGINT, 
	input_text_tokens BIGINT, 
	output_tokens BIGINT, 
	output_image_tokens BIGINT, 
	total_tokens BIGINT, 
	usage_json TEXT, 
	cost_usd FLOAT, balance_usd FLOAT, balance_diem FLOAT, balance_after_usd FLOAT, content_violation BOOLEAN, served_model VARCHAR(200), usage_flag VARCHAR(200), 
	CONSTRAINT pk_attempts PRIMARY KEY (id), 
	CONSTRAINT fk_attempts_job_key_jobs FOREIGN KEY(job_key) REFERENCES jobs ("key"), 
	CONSTRAINT fk_attempts_run_id_runs FOREIGN KEY(run_id) REFERENCES runs (id)
);

CREATE TABLE outputs (
	id INTEGER NOT NULL, 
	job_key VARCHAR(64) NOT NULL, 
	attempt_id INTEGER NOT NULL, 
	image_index INTEGER NOT NULL, 
	path TEXT NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	size_bytes BIGINT NOT NULL, 
	width INTEGER NOT NULL, 
	height INTEGER NOT NULL, 
	format VARCHAR(16) NOT NULL, 
	CONSTRAINT pk_outputs PRIMARY KEY (id), 
	CONSTRAINT fk_outputs_attempt_id_attempts FOREIGN KEY(attempt_id) REFERENCES attempts (id), 
	CONSTRAINT fk_outputs_job_key_jobs FOREIGN KEY(job_key) REFERENCES jobs ("key")
);

CREATE TABLE model_catalogues (
	source_url TEXT NOT NULL, 
	fetched_at DATETIME NOT NULL, 
	body TEXT NOT NULL, 
	CONSTRAINT pk_model_catalogues PRIMARY KEY (source_url)
);

CREATE TABLE provider_stops (
	provider VARCHAR(200) NOT NULL, 
	kind VARCHAR(20) NOT NULL, 
	message TEXT NOT NULL, 
	exit_code INTEGER NOT NULL, 
	run_id VARCHAR(64) NOT NULL, 
	stopped_at DATETIME NOT NULL, 
	CONSTRAINT pk_provider_stops PRIMARY KEY (provider)
);

CREATE TABLE provider_pace (
	provider VARCHAR(200) NOT NULL, 
	next_slot_at DATETIME, 
	slot_run_id VARCHAR(64), 
	paused_until DATETIME, 
	pause_run_id VARCHAR(64), 
	CONSTRAINT pk_provider_pace PRIMARY KEY (provider)
);

CREATE TABLE batches (
	id VARCHAR(64) NOT NULL, 
	provider VARCHAR(200) NOT NULL, 
	manifest TEXT NOT NULL, 
	provider_batch_id VARCHAR(200), 
	input_file_id VARCHAR(200) NOT NULL, 
	status VARCHAR(20) NOT NULL, 
	lines INTEGER NOT NULL, 
	completed_lines INTEGER DEFAULT '0' NOT NULL, 
	failed_lines INTEGER DEFAULT '0' NOT NULL, 
	output_file_id VARCHAR(200), 
	error_file_id VARCHAR(200), 
	run_id VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, 
	expires_at DATETIME, 
	ended_at DATETIME, 
	collected_at DATETIME, 
	files_deleted_at DATETIME, 
	CONSTRAINT pk_batches PRIMARY KEY (id)
);

CREATE TABLE batch_lines (
	batch_id VARCHAR(64) NOT NULL, 
	job_key VARCHAR(64) NOT NULL, 
	estimate_usd FLOAT, 
	outcome VARCHAR(16), 
	CONSTRAINT pk_batch_lines PRIMARY KEY (batch_id, job_key), 
	CONSTRAINT fk_batch_lines_batch_id_batches FOREIGN KEY(batch_id) REFERENCES batches (id), 
	CONSTRAINT fk_batch_lines_job_key_jobs FOREIGN KEY(job_key) REFERENCES jobs ("key")
);

CREATE TABLE uploads (
	provider VARCHAR(200) NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	file_id VARCHAR(200) NOT NULL, 
	size_bytes BIGINT NOT NULL, 
	uploaded_at DATETIME NOT NULL, 
	expires_at DATETIME, 
	CONSTRAINT pk_uploads PRIMARY KEY (provider, sha256)
);

CREATE TABLE manifest_syncs (
	manifest TEXT NOT NULL, 
	fingerprint VARCHAR(64) NOT NULL, 
	duplicates INTEGER NOT NULL, 
	synced_at DATETIME NOT NULL, 
	CONSTRAINT pk_manifest_syncs PRIMARY KEY (manifest)
);

CREATE TABLE prices (
	id INTEGER NOT NULL, 
	body TEXT NOT NULL, 
	CONSTRAINT pk_prices PRIMARY KEY (id), 
	CONSTRAINT uq_prices_body UNIQUE (body)
);

CREATE TABLE manifests (
	id INTEGER NOT NULL, 
	path TEXT NOT NULL, 
	CONSTRAINT pk_manifests PRIMARY KEY (id), 
	CONSTRAINT uq_manifests_path UNIQUE (path)
);

CREATE TABLE manifest_jobs (
	job_key VARCHAR(64) NOT NULL, 
	manifest_id INTEGER NOT NULL, 
	position INTEGER NOT NULL, 
	CONSTRAINT pk_manifest_jobs PRIMARY KEY (job_key, manifest_id), 
	CONSTRAINT fk_manifest_jobs_job_key_jobs FOREIGN KEY(job_key) REFERENCES jobs ("key"), 
	CONSTRAINT fk_manifest_jobs_manifest_id_manifests FOREIGN KEY(manifest_id) REFERENCES manifests (id)
)
 WITHOUT ROWID;

CREATE TABLE folders (
	id INTEGER NOT NULL, 
	path TEXT NOT NULL, 
	CONSTRAINT pk_folders PRIMARY KEY (id), 
	CONSTRAINT uq_folders_path UNIQUE (path)
);

CREATE INDEX ix_jobs_provider_status ON jobs (provider, status);

CREATE INDEX ix_attempts_job_key ON attempts (job_key);

CREATE INDEX ix_outputs_job_key ON outputs (job_key);

CREATE INDEX ix_attempts_outcome_provider ON attempts (outcome, provider);

CREATE INDEX ix_attempts_run_id ON attempts (run_id);

CREATE INDEX ix_batches_provider_collected_at ON batches (provider, collected_at);

CREATE INDEX ix_batch_lines_job_key ON batch_lines (job_key);

CREATE INDEX ix_manifest_jobs_manifest_id_position ON manifest_jobs (manifest_id, position);

CREATE VIEW job_overview AS
SELECT
    jobs.key AS job_key,
    jobs.status AS status,
    jobs.failure_kind AS failure_kind,
    jobs.provider AS provider,
    jobs.model AS model,
    jobs.image_path AS image_path,
    jobs.mask_path AS mask_path,
    jobs.prompt AS prompt,
    jobs.error AS error,
    (SELECT count(*) FROM attempts a WHERE a.job_key = jobs.key) AS attempts,
    (SELECT sum(a.input_tokens) FROM attempts a WHERE a.job_key = jobs.key) AS input_tokens,
    (SELECT sum(a.output_tokens) FROM attempts a WHERE a.job_key = jobs.key) AS output_tokens,
    (SELECT sum(a.total_tokens) FROM attempts a WHERE a.job_key = jobs.key) AS total_tokens,
    (SELECT sum(a.cost_usd) FROM attempts a WHERE a.job_key = jobs.key) AS cost_usd,
    (SELECT group_concat(o.path, char(10)) FROM outputs o WHERE o.job_key = jobs.key)
        AS output_paths,
    (SELECT p.body FROM prices p WHERE p.id = jobs.price_id) AS price,
    strftime('%Y-%m-%d %H:%M:%S', jobs.created_at / 1000000, 'unixepoch') || printf('.%06d', jobs.created_at % 1000000) AS created_at,
    strftime('%Y-%m-%d %H:%M:%S', jobs.finished_at / 1000000, 'unixepoch') || printf('.%06d', jobs.finished_at % 1000000) AS finished_at
FROM jobs;

