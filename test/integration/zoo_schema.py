"""A schema of odd but legal objects (the "zoo"), for migrations in both directions.

`zoo_sql(min_major)` returns the script that builds it in an empty database: over 300 tables,
contrib extensions, enums, domains (some constraints NOT VALID over rows that violate them),
composite, range and (on 14+ at both ends) multirange types and arrays of them, identity and
serial columns, tables with dropped columns, inheritance trees with generated columns, range,
list and hash partitions with defaults and sub-partitions, NOT VALID CHECK and FOREIGN KEY
constraints over violating rows, an exclusion constraint, rules, row-level security policies,
triggers, comments, SET STATISTICS, views, a materialized view, a user publication and an event
trigger that logs DDL into a table. Every object kind is one PostgreSQL 15 accepts, so the
schema can be moved from 15 up and from 18 down.

`table_hashes(dsn)` and `catalog_facts(dsn)` read what the tests compare on both sides.
"""
from conftest import sql

BULK_TABLES = 270  # plus about 40 hand-made ones: over 300

ROLES_SQL = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'zoo_owner') THEN CREATE ROLE zoo_owner; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'zoo_reader') THEN CREATE ROLE zoo_reader; END IF;
END $$;
"""

BASE_SQL = r"""
CREATE EXTENSION hstore;
CREATE EXTENSION citext;
CREATE EXTENSION pg_trgm;
CREATE EXTENSION btree_gist;
CREATE EXTENSION ltree;
CREATE EXTENSION cube;
CREATE EXTENSION "uuid-ossp";
CREATE EXTENSION pgcrypto;

CREATE SCHEMA kinds;
CREATE SCHEMA inh;
CREATE SCHEMA parts;
CREATE SCHEMA nv;
CREATE SCHEMA bulk;
CREATE SCHEMA "Mixed Case";
GRANT USAGE ON SCHEMA kinds TO zoo_reader;
-- From PostgreSQL 16 a subscription copies as the table's owner, who must reach its schema
-- (preflight's owner-schema-usage check says so).
GRANT USAGE ON SCHEMA kinds TO zoo_owner;

-- Types.
CREATE TYPE kinds.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN kinds.zip AS text CHECK (VALUE ~ '^[0-9]{5}$');
CREATE DOMAIN kinds.posint AS integer NOT NULL CHECK (VALUE > 0);
CREATE TYPE kinds.address AS (street text, zip kinds.zip, at point);
CREATE TYPE kinds.floatrange AS RANGE (subtype = float8, subtype_diff = float8mi);
CREATE SEQUENCE kinds.ticket_no START 1000 INCREMENT 7;

CREATE TABLE kinds.everything (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  serial_no serial,
  mood kinds.mood,
  addr kinds.address,
  addrs kinds.address[],
  fr kinds.floatrange,
  frs kinds.floatrange[],
  ir int4range,
  h hstore,
  ci citext,
  path ltree,
  c cube,
  u uuid DEFAULT uuid_generate_v4(),
  j jsonb,
  x xml,
  b bytea,
  tr tstzrange,
  iv interval,
  n numeric(20, 5),
  f float8,
  bits bit varying(16),
  addr_ip inet,
  mac macaddr,
  tsv tsvector,
  pt point,
  grid int[][],
  zip kinds.zip,
  qty kinds.posint DEFAULT 1,
  ticket bigint DEFAULT nextval('kinds.ticket_no'),
  dropped_a int,
  note text,
  dropped_b text);
INSERT INTO kinds.everything (mood, addr, addrs, fr, frs, ir, h, ci, path, c, j, x, b, tr, iv, n, f,
                              bits, addr_ip, mac, tsv, pt, grid, zip, qty, dropped_a, note, dropped_b)
SELECT (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::kinds.mood,
       ROW('Street ' || g, lpad((g * 7)::text, 5, '0'), point(g, -g))::kinds.address,
       ARRAY[ROW('A' || g, '12345', point(0, 0))::kinds.address,
             ROW(NULL, NULL, NULL)::kinds.address],
       kinds.floatrange(g / 3.0, g + 0.5),
       ARRAY[kinds.floatrange(0, 1), kinds.floatrange(2, NULL)],
       int4range(g, g * 2 + 1),
       hstore(ARRAY['k' || g, 'v'], ARRAY['val', NULL]),
       'MiXeD ' || g,
       ('top.mid' || g % 5 || '.leaf' || g)::ltree,
       cube(ARRAY[g, g * 2.5]),
       jsonb_build_object('g', g, 'nested', jsonb_build_array(g, 'x', NULL), 'u', 'ümlaut ✓'),
       xmlelement(name item, xmlattributes(g AS id), 'text ' || g),
       decode(md5(g::text), 'hex'),
       tstzrange('2024-01-01 00:00+00'::timestamptz + g * interval '1 hour',
                 '2024-01-02 00:00+00'::timestamptz + g * interval '1 hour'),
       make_interval(days => g, secs => g / 7.0),
       g * 1.23456,
       g / 3.0,
       (g % 65536)::bit(16)::varbit,
       ('10.0.' || g % 250 || '.1')::inet,
       ('08:00:2b:01:02:' || lpad(to_hex(g % 255), 2, '0'))::macaddr,
       to_tsvector('simple', 'word' || g || ' other words'),
       point(g * 1.5, g),
       ARRAY[[g, g + 1], [g + 2, g + 3]],
       lpad(g::text, 5, '0'),
       1 + g % 9,
       g,
       'note ' || g,
       'gone ' || g
FROM generate_series(1, 300) g;
ALTER TABLE kinds.everything DROP COLUMN dropped_a;
ALTER TABLE kinds.everything DROP COLUMN dropped_b;
ALTER TABLE kinds.everything ALTER COLUMN j SET STATISTICS 500;
ALTER TABLE kinds.everything ALTER COLUMN note SET STATISTICS 10;
CREATE INDEX everything_note_trgm ON kinds.everything USING gin (note gin_trgm_ops);
CREATE INDEX everything_path ON kinds.everything USING gist (path);
CREATE INDEX everything_h ON kinds.everything USING gin (h);
CREATE INDEX everything_lower_note ON kinds.everything (lower(note)) WHERE mood <> 'sad';
COMMENT ON TABLE kinds.everything IS 'one column of almost every kind';
COMMENT ON COLUMN kinds.everything.addrs IS 'an array of a composite type';
GRANT SELECT ON kinds.everything TO zoo_reader;

-- An exclusion constraint (btree_gist for the equality part).
CREATE TABLE kinds.booking (
  id int PRIMARY KEY,
  room int NOT NULL,
  during tstzrange NOT NULL,
  EXCLUDE USING gist (room WITH =, during WITH &&));
INSERT INTO kinds.booking
SELECT g, g % 10, tstzrange('2024-01-01 00:00+00'::timestamptz + (g / 10) * interval '1 day',
                            '2024-01-01 00:00+00'::timestamptz + (g / 10 + 1) * interval '1 day')
FROM generate_series(1, 200) g;

-- Rules: a view that takes inserts, and a table rule.
CREATE TABLE kinds.rule_log (id serial PRIMARY KEY, note text NOT NULL, seen int NOT NULL DEFAULT 0);
INSERT INTO kinds.rule_log (note) SELECT 'entry ' || g FROM generate_series(1, 50) g;
CREATE VIEW kinds.rule_view AS SELECT id, note FROM kinds.rule_log;
CREATE RULE rule_view_insert AS ON INSERT TO kinds.rule_view
  DO INSTEAD INSERT INTO kinds.rule_log (note) VALUES (NEW.note);
CREATE RULE rule_log_no_delete AS ON DELETE TO kinds.rule_log WHERE OLD.seen > 100 DO INSTEAD NOTHING;

-- Row-level security (owned by an ordinary role, policies not forced on it).
CREATE TABLE kinds.secrets (id int PRIMARY KEY, owner text NOT NULL, secret text);
ALTER TABLE kinds.secrets OWNER TO zoo_owner;
INSERT INTO kinds.secrets SELECT g, 'user' || g % 4, 'secret ' || g FROM generate_series(1, 40) g;
ALTER TABLE kinds.secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON kinds.secrets FOR SELECT TO zoo_reader USING (owner = current_user);
CREATE POLICY no_writes ON kinds.secrets AS RESTRICTIVE FOR UPDATE USING (false);

-- An ordinary trigger (does not fire in replication: the target keeps the source's value).
CREATE TABLE kinds.touched (id int PRIMARY KEY, v int, updated_at timestamptz NOT NULL DEFAULT now());
INSERT INTO kinds.touched SELECT g, g, '2020-01-01' FROM generate_series(1, 30) g;
CREATE FUNCTION kinds.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE TRIGGER touched_touch BEFORE UPDATE ON kinds.touched FOR EACH ROW EXECUTE FUNCTION kinds.touch();
CREATE FUNCTION kinds.add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE RETURN a + b;
CREATE TABLE "Mixed Case"."Odd ""Quoted"" Table" ("Key" int PRIMARY KEY, "Value; DROP" text);
INSERT INTO "Mixed Case"."Odd ""Quoted"" Table" SELECT g, 'v' || g FROM generate_series(1, 10) g;

-- Inheritance with generated columns (the children inherit the parent's expression).
CREATE TABLE inh.vehicle (
  id int PRIMARY KEY,
  wheels int NOT NULL,
  weight int NOT NULL,
  axle_load int GENERATED ALWAYS AS (weight / greatest(wheels / 2, 1)) STORED);
CREATE TABLE inh.car (seats int NOT NULL DEFAULT 4, PRIMARY KEY (id)) INHERITS (inh.vehicle);
CREATE TABLE inh.sportscar (top_speed int, PRIMARY KEY (id)) INHERITS (inh.car);
CREATE TABLE inh.tagged (id int PRIMARY KEY, tag text);
CREATE TABLE inh.amphibian (draft numeric, PRIMARY KEY (id)) INHERITS (inh.vehicle, inh.tagged);
INSERT INTO inh.vehicle (id, wheels, weight) SELECT g, 2, 100 + g FROM generate_series(1, 20) g;
INSERT INTO inh.car (id, wheels, weight) SELECT g, 4, 1000 + g FROM generate_series(21, 60) g;
INSERT INTO inh.sportscar (id, wheels, weight, top_speed) SELECT g, 4, 900, 300 FROM generate_series(61, 70) g;
INSERT INTO inh.amphibian (id, wheels, weight, tag, draft) SELECT g, 6, 3000, 'wet', 1.5 FROM generate_series(71, 75) g;

-- Partitions of every kind, with defaults and sub-partitions.
CREATE TABLE parts.events (id bigint NOT NULL, at date NOT NULL, kind text NOT NULL, payload jsonb,
                           PRIMARY KEY (id, at, kind)) PARTITION BY RANGE (at);
CREATE TABLE parts.events_2023 PARTITION OF parts.events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01')
  PARTITION BY LIST (kind);
CREATE TABLE parts.events_2023_click PARTITION OF parts.events_2023 FOR VALUES IN ('click');
CREATE TABLE parts.events_2023_view PARTITION OF parts.events_2023 FOR VALUES IN ('view', 'scroll');
CREATE TABLE parts.events_2023_other PARTITION OF parts.events_2023 DEFAULT;
CREATE TABLE parts.events_2024 PARTITION OF parts.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')
  PARTITION BY HASH (id);
CREATE TABLE parts.events_2024_h0 PARTITION OF parts.events_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE parts.events_2024_h1 PARTITION OF parts.events_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE parts.events_rest PARTITION OF parts.events DEFAULT;
INSERT INTO parts.events
SELECT g, date '2023-01-01' + (g % 900), (ARRAY['click', 'view', 'scroll', 'buy'])[1 + g % 4],
       jsonb_build_object('n', g)
FROM generate_series(1, 2000) g;
CREATE INDEX events_kind ON parts.events (kind, at);
CREATE TABLE parts.regions (code text NOT NULL, id int NOT NULL, name text, PRIMARY KEY (code, id))
  PARTITION BY LIST (code);
CREATE TABLE parts.regions_eu PARTITION OF parts.regions FOR VALUES IN ('de', 'fr', 'it');
CREATE TABLE parts.regions_us PARTITION OF parts.regions FOR VALUES IN ('us');
CREATE TABLE parts.regions_other PARTITION OF parts.regions DEFAULT;
INSERT INTO parts.regions SELECT (ARRAY['de', 'fr', 'us', 'jp', 'br'])[1 + g % 5], g, 'r' || g
FROM generate_series(1, 100) g;
CREATE TABLE parts.sessions (id uuid PRIMARY KEY, started timestamptz NOT NULL, data hstore)
  PARTITION BY HASH (id);
CREATE TABLE parts.sessions_0 PARTITION OF parts.sessions FOR VALUES WITH (MODULUS 4, REMAINDER 0);
CREATE TABLE parts.sessions_1 PARTITION OF parts.sessions FOR VALUES WITH (MODULUS 4, REMAINDER 1);
CREATE TABLE parts.sessions_2 PARTITION OF parts.sessions FOR VALUES WITH (MODULUS 4, REMAINDER 2);
CREATE TABLE parts.sessions_3 PARTITION OF parts.sessions FOR VALUES WITH (MODULUS 4, REMAINDER 3);
INSERT INTO parts.sessions
SELECT md5(g::text)::uuid, '2024-06-01'::timestamptz + g * interval '1 minute', hstore('n', g::text)
FROM generate_series(1, 400) g;
CREATE TABLE parts.readings (sensor int NOT NULL, at timestamptz NOT NULL, v float8,
                             PRIMARY KEY (sensor, at)) PARTITION BY RANGE (sensor, at);
CREATE TABLE parts.readings_low PARTITION OF parts.readings
  FOR VALUES FROM (MINVALUE, MINVALUE) TO (100, '2030-01-01');
CREATE TABLE parts.readings_high PARTITION OF parts.readings
  FOR VALUES FROM (100, '2030-01-01') TO (MAXVALUE, MAXVALUE);
INSERT INTO parts.readings SELECT g % 200, '2024-01-01'::timestamptz + g * interval '1 s', g / 10.0
FROM generate_series(1, 500) g;

-- Constraints NOT VALID over rows that violate them (added that way to avoid a long lock).
CREATE TABLE nv.parent (id int PRIMARY KEY, name text);
INSERT INTO nv.parent SELECT g, 'p' || g FROM generate_series(1, 20) g;
CREATE TABLE nv.child (id int PRIMARY KEY, parent_id int, amount int, code text);
INSERT INTO nv.child SELECT g, CASE WHEN g % 10 = 0 THEN 999 ELSE 1 + g % 20 END,
                            CASE WHEN g % 7 = 0 THEN -g ELSE g END, 'ok'
FROM generate_series(1, 100) g;
ALTER TABLE nv.child ADD CONSTRAINT child_parent_fk FOREIGN KEY (parent_id) REFERENCES nv.parent (id) NOT VALID;
ALTER TABLE nv.child ADD CONSTRAINT child_amount_positive CHECK (amount > 0) NOT VALID;
CREATE DOMAIN nv.upper_code AS text;
CREATE TABLE nv.coded (id int PRIMARY KEY, code nv.upper_code);
INSERT INTO nv.coded SELECT g, CASE WHEN g % 5 = 0 THEN 'lower' ELSE 'UPPER' END FROM generate_series(1, 25) g;
ALTER DOMAIN nv.upper_code ADD CONSTRAINT upper_code_check CHECK (VALUE = upper(VALUE)) NOT VALID;

-- A user publication, and a materialized view.
CREATE PUBLICATION zoo_pub FOR TABLE kinds.everything, kinds.booking WITH (publish = 'insert, update');
CREATE MATERIALIZED VIEW kinds.mood_counts AS SELECT mood, count(*) AS n FROM kinds.everything GROUP BY mood;
CREATE UNIQUE INDEX ON kinds.mood_counts (mood);
"""

MULTIRANGE_SQL = r"""
CREATE TABLE kinds.spans (
  id int PRIMARY KEY,
  fm kinds.floatmultirange,
  im int4multirange,
  ims int4multirange[]);
INSERT INTO kinds.spans
SELECT g, kinds.floatmultirange(kinds.floatrange(0, g), kinds.floatrange(g + 1, g + 2)),
       int4multirange(int4range(1, g + 1), int4range(g + 5, g + 9)),
       ARRAY[int4multirange(int4range(1, 2)), '{}'::int4multirange]
FROM generate_series(1, 60) g;
"""

# Last, so that building the zoo is not itself logged.
EVENT_TRIGGER_SQL = r"""
CREATE TABLE kinds.ddl_audit (id bigserial PRIMARY KEY, tag text NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION kinds.audit_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO kinds.ddl_audit (tag) VALUES (tg_tag); END $$;
CREATE EVENT TRIGGER zoo_audit ON ddl_command_end EXECUTE FUNCTION kinds.audit_ddl();
"""


def bulk_sql(n=BULK_TABLES):
    """`n` tables of varied shapes: keys of several types, foreign keys between neighbours,
    checks, defaults, comments, statistics targets."""
    out = []
    for i in range(1, n + 1):
        t = f"bulk.t{i:03d}"
        shape = i % 6
        if shape == 0:
            out.append(f"CREATE TABLE {t} (id bigserial PRIMARY KEY, v text NOT NULL DEFAULT 'x{i}', "
                       f"n int CHECK (n >= 0));")
            out.append(f"INSERT INTO {t} (v, n) SELECT 'v' || g, g FROM generate_series(1, {5 + i % 20}) g;")
        elif shape == 1:
            out.append(f"CREATE TABLE {t} (a int, b text, c date DEFAULT '2024-01-01', PRIMARY KEY (a, b));")
            out.append(f"INSERT INTO {t} SELECT g % 7, 'k' || g, date '2024-01-01' + g "
                       f"FROM generate_series(1, {10 + i % 15}) g;")
        elif shape == 2:
            out.append(f"CREATE TABLE {t} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
                       f"doc jsonb, tags text[]);")
            out.append(f"INSERT INTO {t} (id, doc, tags) SELECT md5('{i}-' || g)::uuid, "
                       f"jsonb_build_object('i', g), ARRAY['a', 'b' || g] FROM generate_series(1, {3 + i % 9}) g;")
        elif shape == 3:
            prev = f"bulk.t{i - 3:03d}" if i > 3 else None
            fk = f", parent bigint REFERENCES {prev} (id)" if prev and (i - 3) % 6 == 0 else ""
            out.append(f"CREATE TABLE {t} (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
                       f"amount numeric(12, 2) NOT NULL{fk});")
            if fk:
                out.append(f"INSERT INTO {t} (amount, parent) SELECT g * 1.5, 1 FROM generate_series(1, 8) g;")
            else:
                out.append(f"INSERT INTO {t} (amount) SELECT g * 1.5 FROM generate_series(1, 8) g;")
        elif shape == 4:
            out.append(f"CREATE TABLE {t} (id int PRIMARY KEY, mood kinds.mood, at timestamptz, "
                       f"gone int, flag boolean DEFAULT true);")
            out.append(f"INSERT INTO {t} SELECT g, 'ok', '2024-01-01'::timestamptz + g * interval '1 day', g "
                       f"FROM generate_series(1, 12) g;")
            out.append(f"ALTER TABLE {t} DROP COLUMN gone;")
        else:
            out.append(f"CREATE TABLE {t} (id int PRIMARY KEY, body text, n bigint);")
            out.append(f"INSERT INTO {t} SELECT g, repeat('z', g), g * g FROM generate_series(1, 6) g;")
            out.append(f"ALTER TABLE {t} ALTER COLUMN body SET STATISTICS {50 + i};")
        if i % 10 == 0:
            out.append(f"COMMENT ON TABLE {t} IS 'bulk table {i}';")
    return "\n".join(out) + "\n"


def zoo_sql(min_major):
    """The whole zoo; multirange types only where both ends have them (PostgreSQL 14+)."""
    parts = [BASE_SQL, bulk_sql()]
    if min_major >= 14:
        parts.append(MULTIRANGE_SQL)
    parts.append(EVENT_TRIGGER_SQL)
    return "\n".join(parts)


def user_tables(dsn):
    """Every user table that holds rows (relkind r), as a quoted qualified name."""
    return sql(dsn, "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
                    "AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_pgshift', "
                    "'pgshift_load') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1").splitlines()


def table_hashes(dsn, tables):
    """{table: "rows:md5"} of every table's rows in text form, sorted, read in one query.
    ONLY: each table's own rows, not its inheritance children's."""
    parts = [f"SELECT {i} AS i, count(*)::text || ':' || coalesce(md5(string_agg(t::text, "
             f"E'\\n' ORDER BY t::text COLLATE \"C\")), '-') FROM ONLY {name} t"
             for i, name in enumerate(tables)]
    out = {}
    # A few statements, not hundreds of psql runs.
    for start in range(0, len(parts), 100):
        query = ("SET extra_float_digits = 1; SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; "
                 "SET IntervalStyle = 'postgres'; SET bytea_output = 'hex'; "
                 + " UNION ALL ".join(parts[start:start + 100]))
        for line in sql(dsn, query).splitlines():
            if "|" not in line:
                continue  # the SET commands' tags
            i, h = line.split("|", 1)
            out[tables[int(i)]] = h
    return out


# What must be the same on both sides, object by object (names, definitions, validity).
CATALOG_QUERIES = {
    "constraints": "SELECT format('%s %s %s %s', coalesce(nullif(conrelid, 0)::regclass::text, contypid::regtype::text), "
                   "conname, contype, convalidated) FROM pg_constraint c JOIN pg_namespace n "
                   "ON n.oid = c.connamespace WHERE n.nspname IN ('kinds', 'inh', 'parts', 'nv', 'bulk') "
                   "AND contype <> 'n'",
    "not_valid": "SELECT format('%s %s', coalesce(nullif(conrelid, 0)::regclass::text, contypid::regtype::text), "
                 "conname) FROM pg_constraint WHERE NOT convalidated",
    "indexes": "SELECT format('%s %s', indexrelid::regclass, indrelid::regclass) FROM pg_index i "
               "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
               "WHERE n.nspname IN ('kinds', 'inh', 'parts', 'nv', 'bulk', 'Mixed Case')",
    "policies": "SELECT format('%s %s %s %s', schemaname, tablename, policyname, permissive) FROM pg_policies",
    "rls": "SELECT format('%s %s %s', oid::regclass, relrowsecurity, relforcerowsecurity) FROM pg_class "
           "WHERE relrowsecurity",
    "rules": "SELECT format('%s %s %s', schemaname, tablename, rulename) FROM pg_rules "
             "WHERE schemaname NOT IN ('pg_catalog')",
    "triggers": "SELECT format('%s %s %s', tgrelid::regclass, tgname, tgenabled) FROM pg_trigger "
                "WHERE NOT tgisinternal AND tgrelid::regclass::text NOT LIKE '\\_pgshift.%'",
    "event_triggers": "SELECT format('%s %s %s', evtname, evtevent, evtenabled) FROM pg_event_trigger "
                      "WHERE evtname NOT LIKE 'pgshift%'",
    "publications": "SELECT format('%s %s', pubname, tablename) FROM pg_publication_tables "
                    "WHERE pubname NOT LIKE 'pgshift%'",
    "comments": "SELECT format('%s %s %s', classoid::regclass, objsubid, description) FROM pg_description d "
                "JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', "
                "'information_schema')",
    "statistics": "SELECT format('%s %s %s', attrelid::regclass, attname, attstattarget) FROM pg_attribute a "
                  "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                  "WHERE n.nspname IN ('kinds', 'bulk') AND attnum > 0 AND NOT attisdropped "
                  "AND coalesce(attstattarget, -1) >= 0",
    "identity_generated": "SELECT format('%s %s %s %s', attrelid::regclass, attname, attidentity, attgenerated) "
                          "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n "
                          "ON n.oid = c.relnamespace WHERE n.nspname IN ('kinds', 'inh', 'bulk') "
                          "AND (attidentity <> '' OR attgenerated <> '')",
    "partitions": "SELECT format('%s %s', oid::regclass, pg_get_expr(relpartbound, oid)) FROM pg_class "
                  "WHERE relispartition",
    "inheritance": "SELECT format('%s %s %s', inhrelid::regclass, inhparent::regclass, inhseqno) FROM pg_inherits",
    "extensions": "SELECT extname FROM pg_extension",
    "types": "SELECT format('%s %s', t.oid::regtype, t.typtype) FROM pg_type t JOIN pg_namespace n "
             "ON n.oid = t.typnamespace WHERE n.nspname IN ('kinds', 'nv') AND t.typtype IN "
             "('e', 'd', 'c', 'r', 'm') AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.reltype = t.oid)",
    # Grants to others than the owner (17 added MAINTAIN to the owner's own).
    "acl": "SELECT format('%s %s %s', c.oid::regclass, a.grantee::regrole, a.privilege_type) "
           "FROM pg_class c, aclexplode(c.relacl) a WHERE c.relnamespace = 'kinds'::regnamespace "
           "AND a.grantee <> c.relowner",
}


def catalog_facts(dsn):
    """{kind: sorted lines} of the objects the zoo holds, for comparing two servers."""
    return {k: sorted(line.rstrip() for line in sql(dsn, q).splitlines())
            for k, q in CATALOG_QUERIES.items()}
