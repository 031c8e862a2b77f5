"""Database access for the toll-plaza example: SQLite by default, or PostgreSQL / MySQL-MariaDB
given a URL. Owns the schema and the idempotent insert. The primary key (kafka_partition,
kafka_offset) makes a re-delivered record a no-op, so the consumer can crash between its database
commit and its offset commit without writing any event twice."""

import sqlite3
from urllib.parse import urlparse, unquote

SCHEMA = """
CREATE TABLE IF NOT EXISTS toll_events (
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT  NOT NULL,
    event_id        VARCHAR(64) NOT NULL,
    vehicle_id      VARCHAR(32) NOT NULL,
    vehicle_type    VARCHAR(16) NOT NULL,
    plaza_id        INTEGER NOT NULL,
    event_time_ms   BIGINT  NOT NULL,
    PRIMARY KEY (kafka_partition, kafka_offset)
)
"""

COLUMNS = "kafka_partition, kafka_offset, event_id, vehicle_id, vehicle_type, plaza_id, event_time_ms"


class Database:
    """A connection plus the SQL dialect details that differ between engines."""

    def __init__(self, url: str):
        parsed = urlparse(url)
        self.kind = parsed.scheme.split("+")[0]
        if self.kind == "sqlite":
            # sqlite:///relative.db or sqlite:////absolute/path.db
            path = url.split("sqlite:///", 1)[1] if "sqlite:///" in url else "toll.db"
            self.conn = sqlite3.connect(path, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.placeholder = "?"
            self.insert_ignore = f"INSERT OR IGNORE INTO toll_events ({COLUMNS}) VALUES ({{}})"
        elif self.kind in ("postgres", "postgresql"):
            import psycopg2  # optional dependency: pip install psycopg2-binary

            self.conn = psycopg2.connect(url)
            self.placeholder = "%s"
            self.insert_ignore = (
                f"INSERT INTO toll_events ({COLUMNS}) VALUES ({{}}) ON CONFLICT DO NOTHING"
            )
        elif self.kind in ("mysql", "mariadb"):
            import pymysql  # optional dependency: pip install pymysql

            self.conn = pymysql.connect(
                host=parsed.hostname or "127.0.0.1", port=parsed.port or 3306,
                user=unquote(parsed.username or "root"), password=unquote(parsed.password or ""),
                database=parsed.path.lstrip("/"), autocommit=False)
            self.placeholder = "%s"
            self.insert_ignore = f"INSERT IGNORE INTO toll_events ({COLUMNS}) VALUES ({{}})"
        else:
            raise SystemExit(f"unsupported database URL {url!r} (sqlite:///, postgresql://, mysql://)")
        cur = self.conn.cursor()
        cur.execute(SCHEMA)
        self._commit()

    def _begin(self):
        if self.kind == "sqlite":
            self.conn.execute("BEGIN")

    def _commit(self):
        if self.kind == "sqlite":
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")
        else:
            self.conn.commit()

    def insert_batch(self, rows) -> int:
        """Inserts rows in one transaction; returns how many were new."""
        sql = self.insert_ignore.format(", ".join([self.placeholder] * 7))
        self._begin()
        cur = self.conn.cursor()
        new = 0
        for row in rows:
            cur.execute(sql, row)
            new += max(cur.rowcount, 0)
        self._commit()
        return new

    def query(self, sql, params=()):
        cur = self.conn.cursor()
        cur.execute(sql, params)
        return cur.fetchall()

    def close(self):
        self.conn.close()
