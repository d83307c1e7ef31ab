"""The ORM: studies and their findings and reviews, then accounts and the audit trail, on one `Base`
so one metadata covers every table. Schema changes go through Alembic migrations in `migrations/` only."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class StudyStatus(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


def _trigram_available(_ddl: object, _target: object, bind: Connection | None, **_kw: object) -> bool:
    """Make a trigram index only on PostgreSQL with pg_trgm installed (migration 0008 installs it when
    it may; `create_all` on a database without it makes the tables, not these indexes)."""
    if bind is None or bind.dialect.name != "postgresql":
        return False
    return bind.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).first() is not None


def _trigram_index(name: str, column: str) -> Index:
    """A GIN trigram index on lower(column), the expression the worklist search matches with LIKE."""
    index = Index(name, func.lower(text(column)), postgresql_using="gin",
                  postgresql_ops={"lower_1": "gin_trgm_ops"})
    return index.ddl_if(dialect="postgresql", callable_=_trigram_available)


TRIGRAM_INDEXES = (_trigram_index("ix_studies_patient_name_trgm", "patient_name"),
                   _trigram_index("ix_studies_filename_trgm", "original_filename"))


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    label: Mapped[str | None] = mapped_column(String(200))

    studies: Mapped[list[Study]] = relationship(back_populates="batch", order_by="Study.id")


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        Index("ix_studies_worklist", "status", "due_at"),
        Index("ix_studies_batch_status", "batch_id", "status"),
        Index("ix_studies_status_updated", "status", "updated_at"),
        # Added in migration 0002: the open worklist (done, not reviewed) in due order, keyset-paged;
        # reviewed studies by due time; uploads by date.
        Index("ix_studies_open_due", "due_at", "id",
              sqlite_where=text("status = 'done' AND reviewed_at IS NULL"),
              postgresql_where=text("status = 'done' AND reviewed_at IS NULL")),
        Index("ix_studies_status_due_id", "status", "due_at", "id"),
        Index("ix_studies_created_at", "created_at"),
        # Migration 0008, PostgreSQL only: the worklist's search by part of a name (web/worklist.py).
        *TRIGRAM_INDEXES,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), nullable=False)
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.QUEUED.value, nullable=False)

    # The file as uploaded.
    original_filename: Mapped[str] = mapped_column(String(255), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), index=True, nullable=False)
    stored_path: Mapped[str] = mapped_column(String(255), nullable=False)
    format: Mapped[str] = mapped_column(String(8), nullable=False)  # png | jpeg | dicom
    size_bytes: Mapped[int] = mapped_column(Integer, nullable=False)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)

    # DICOM metadata a worklist needs (None for PNG/JPEG).
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(200))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    modality: Mapped[str | None] = mapped_column(String(16))
    view_position: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    # De-identified DICOMs only (migration 0005): True when the pixels may show identifying text that
    # de-identification cannot remove (shared.deid.burned_in_annotation); None when not checked.
    burned_in_annotation: Mapped[bool | None] = mapped_column(Boolean)

    # Processing.
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(64))
    model_trained: Mapped[bool | None] = mapped_column(Boolean)
    model_runtime: Mapped[str | None] = mapped_column(String(32))  # e.g. openvino-bf16
    display_path: Mapped[str | None] = mapped_column(String(255))  # the picture the web shows (DICOM)
    timings: Mapped[dict | None] = mapped_column(JSON)
    # shared.frontal: True when the image is not a frontal chest X-ray (its findings are unreliable and
    # never make it urgent), with the reason in words; None for studies diagnosed before the check.
    not_frontal: Mapped[bool | None] = mapped_column(Boolean)
    not_frontal_reason: Mapped[str | None] = mapped_column(String(300))

    # Triage: urgency in [0, 1] from the findings; due_at orders the worklist (earliest first).
    urgency: Mapped[float | None] = mapped_column(Float)
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, nullable=False
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when a clinician reviews the study (migration 0002); the Review rows keep the audit trail.
    # The status stays `done`: a reviewed study leaves the open worklist by this column.
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    batch: Mapped[Batch] = relationship(back_populates="studies")
    findings: Mapped[list[Finding]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="Finding.id"
    )
    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="Delivery.id"
    )


class Finding(Base):
    __tablename__ = "findings"
    __table_args__ = (
        UniqueConstraint("study_id", "label", name="uq_findings_study_label"),
        # Added in migration 0002: the worklist filter "finding X above threshold".
        Index("ix_findings_label_positive", "label", "positive", "study_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), nullable=False)
    label: Mapped[str] = mapped_column(String(32), nullable=False)
    probability: Mapped[float] = mapped_column(Float, nullable=False)
    threshold: Mapped[float] = mapped_column(Float, nullable=False)
    positive: Mapped[bool] = mapped_column(Boolean, nullable=False)
    heatmap_path: Mapped[str | None] = mapped_column(String(255))
    box_x: Mapped[int | None] = mapped_column(Integer)
    box_y: Mapped[int | None] = mapped_column(Integer)
    box_w: Mapped[int | None] = mapped_column(Integer)
    box_h: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[Study] = relationship(back_populates="findings")


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class Delivery(Base):
    """The sending of a done study's results (SR and Secondary Capture) to one DICOM destination
    (migration 0007): `pending` until every object was accepted (`sent`), or `failed` with the last
    reason once its attempts are used up. Written with the study's findings, in the same transaction."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("study_id", "destination", name="uq_deliveries_study_destination"),
        Index("ix_deliveries_status_updated", "status", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), nullable=False)
    destination: Mapped[str] = mapped_column(String(200), nullable=False)  # AE@host:port
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, nullable=False
    )
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    study: Mapped[Study] = relationship(back_populates="deliveries")


class Review(Base):
    """A clinician's review of a done study (migration 0002): kept for audit, never updated.

    `reviewer` is the reviewing account's username, copied so the record outlives the account;
    `verdicts` maps a finding label to "agree" or "disagree" for the findings the clinician judged.
    """

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True, nullable=False)
    reviewer: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)
    verdicts: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class Role(enum.StrEnum):
    ADMIN = "admin"
    RADIOLOGIST = "radiologist"
    UPLOADER = "uploader"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    # werkzeug.security format ("scrypt:32768:8:1$salt$hash"): algorithm and parameters travel with it.
    password_hash: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", cascade="all, delete-orphan")


class ApiToken(Base):
    """A bearer token: only its sha256 is stored; the token itself is shown once when created."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    label: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    user: Mapped[User] = relationship(back_populates="tokens")


class WebSession(Base):
    """A page session, held on the server: the cookie carries a random id, only its sha256 is stored.
    Logging out deletes the row; a password change, disabling the user or revoking their access deletes
    all of theirs. A cookie whose row is gone (or older than the session lifetime) is refused."""

    __tablename__ = "web_sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False,
                                                 index=True)


class LoginFailure(Base):
    """One failed login: the rate limiter counts these per username and per client address, so the
    limit holds across every web process that shares the database."""

    __tablename__ = "login_failures"
    __table_args__ = (
        Index("ix_login_failures_username_at", "username", "at"),
        Index("ix_login_failures_ip_at", "ip", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), nullable=False)
    ip: Mapped[str] = mapped_column(String(64), nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class BatchUploader(Base):
    """Who uploaded into a batch: an uploader may follow the progress of these batches only."""

    __tablename__ = "batch_uploaders"

    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)


class AuditEvent(Base):
    """Who did what to which study or batch, when and from where. Never updated or deleted by the app.

    `user_id` is kept without a foreign key and `username` is copied, so the trail outlives a deleted
    account or study. No patient identifier is ever written here: studies are named by id only.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_study_at", "study_id", "at"),
        Index("ix_audit_events_user_at", "user_id", "at"),
        Index("ix_audit_events_action_at", "action", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    user_id: Mapped[int | None] = mapped_column(Integer)
    username: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    study_id: Mapped[int | None] = mapped_column(Integer)
    batch_id: Mapped[int | None] = mapped_column(Integer)
    ip: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict | None] = mapped_column(JSON)
