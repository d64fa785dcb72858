"""Tables of the state database (SQLAlchemy Core). Alembic migrations in migrations/ create them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# The deletion ledger: entries are Merkle leaves; the head keeps the tree's right edge so that an
# append costs O(log n); checkpoints are signed notes over (size, root).
ledger_entry = Table(
    "ledger_entry",
    metadata,
    # On SQLite, INTEGER makes seq the rowid: entries are stored and scanned in seq order.
    Column(
        "seq",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("entry", Text, nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

ledger_checkpoint = Table(
    "ledger_checkpoint",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tree_size", BigInteger, nullable=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # The tree's right edge at tree_size, so the next checkpoint re-checks only the newer entries.
    Column("frontier", LargeBinary, nullable=False),
)

ledger_head = Table(
    "ledger_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("origin", String(200), nullable=False),
    Column("tree_size", BigInteger, nullable=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("frontier", LargeBinary, nullable=False),
    Column("last_time", DateTime(timezone=True), nullable=True),
)

# Holds added with the CLI (holds in the config are not copied here). `where_json` holds key values,
# which are personal data: they stay in the state database and reach the ledger only as a digest.
hold = Table(
    "hold",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rule", String(200), nullable=True),
    Column("table_name", String(200), nullable=True),
    Column("where_json", Text, nullable=True),
    Column("path_prefix", Text, nullable=True),
    Column("reason", Text, nullable=False),
    Column("until", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("released_at", DateTime(timezone=True), nullable=True),
    Column("created_seq", BigInteger, nullable=True),
    Column("released_seq", BigInteger, nullable=True),
)

# The keystore: secrets wrapped under the key-encryption key (whose generation is counted here).
keystore_meta = Table(
    "keystore_meta",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("kek_generation", Integer, nullable=False),
    Column("rotated_at", DateTime(timezone=True), nullable=True),
)

keystore_secret = Table(
    "keystore_secret",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("wrapped", LargeBinary, nullable=False),
    Column("kek_generation", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

sealed_copy = Table(
    "sealed_copy",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("path", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("label_digest", String(80), nullable=True),
    Column("recipient", Text, nullable=False),
    Column("wrapped_identity", LargeBinary, nullable=True),
    Column("kek_generation", Integer, nullable=False),
    Column("key_exported", Boolean, nullable=False, default=False),
    Column("shredded_at", DateTime(timezone=True), nullable=True),
    Column("shred_seq", BigInteger, nullable=True),
    Column("shred_rule", String(200), nullable=True),
    Index("ix_sealed_copy_expires_at", "expires_at"),
)

# Per-rule state for `status`, the scheduler and the metrics.
rule_state = Table(
    "rule_state",
    metadata,
    Column("rule", String(200), primary_key=True),
    Column("config_hash", String(80), nullable=True),
    Column("last_run_id", String(36), nullable=True),
    Column("last_run_at", DateTime(timezone=True), nullable=True),
    Column("last_result", String(20), nullable=True),
    Column("last_success_at", DateTime(timezone=True), nullable=True),
    Column("next_run_at", DateTime(timezone=True), nullable=True),
    Column("overdue_items", BigInteger, nullable=True),
    Column("oldest_item_age_seconds", Float, nullable=True),
    Column("held_items", BigInteger, nullable=True),
)

# A run and its batches: written before and while a run deletes, so that an interrupted run is
# reconciled at the next start and every committed deletion reaches the ledger.
run = Table(
    "run",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("rule", String(200), nullable=False),
    Column("status", String(20), nullable=False),  # running, done, failed, refused, reconciled
    Column("owner", String(200), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("cutoff", DateTime(timezone=True), nullable=True),
    Column("plan_json", Text, nullable=False),
    Column("ledger_seq", BigInteger, nullable=True),
    Index("ix_run_status", "status"),
)

run_batch = Table(
    "run_batch",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(36), ForeignKey("run.run_id"), nullable=False),
    Column("state", String(10), nullable=False),  # pending (write-ahead) or done
    Column("candidates", LargeBinary, nullable=True),  # write-ahead keys, dropped when done
    Column("items", BigInteger, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("digest", String(80), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_run_batch_run", "run_id"),
)

# Leases let several daemons share one state database: a rule's slot runs once.
rule_lease = Table(
    "rule_lease",
    metadata,
    Column("rule", String(200), primary_key=True),
    Column("owner", String(200), nullable=True),
    Column("slot", DateTime(timezone=True), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
)
