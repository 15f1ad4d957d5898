"""Warm planner statistics at cutover: logical replication copies rows, not pg_statistic, so
before the target is ready for cutover pgshift gives the target statistics. An 18 target takes
the source's own (pg_dump --statistics-only), then ANALYZE does what that leaves out (tables the
source never analyzed, extended statistics objects); an older target ANALYZEs every table
(partitioned tables at their root, materialized views after their refresh, extended statistics
objects with them). Autovacuum is off on both servers, so only pgshift can have made the
statistics found, and a table whose rows changed after the source's last ANALYZE tells the two
paths apart: copied statistics describe the old rows, an ANALYZE on the target the new ones."""
import pytest

from conftest import sql


SCHEMA = """
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer int NOT NULL, city text NOT NULL,
                            zip text NOT NULL);
INSERT INTO public.orders SELECT g, g % 500, 'city' || (g % 50), 'zip' || (g % 50)
  FROM generate_series(1, 50000) g;
CREATE STATISTICS orders_city_zip (dependencies, ndistinct) ON city, zip FROM public.orders;
CREATE TABLE public.events (id bigint NOT NULL, at date NOT NULL, body text,
                            PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE public.events_2025 PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE public.events_2026 PARTITION OF public.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO public.events SELECT g, date '2025-06-01' + (g % 400), 'e' || g FROM generate_series(1, 20000) g;
CREATE MATERIALIZED VIEW public.orders_per_city AS SELECT city, count(*) AS n FROM public.orders GROUP BY city;
CREATE TABLE public.kept (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO public.kept SELECT g, 1 FROM generate_series(1, 5000) g;
ANALYZE public.kept, public.events;
UPDATE public.kept SET v = 2;
CREATE TABLE public.fresh (id int PRIMARY KEY, note text);
INSERT INTO public.fresh SELECT g, 'n' FROM generate_series(1, 1000) g;
"""


@pytest.mark.parametrize("src_version,dst_version", [(13, 18), (18, 13)])
def test_every_table_has_statistics_on_the_target_before_cutover(lab, src_version, dst_version):
    src = lab.start(f"st{src_version}-src", src_version)
    dst = lab.start(f"st{src_version}-dst", dst_version)
    for server in (src, dst):
        sql(server, "ALTER SYSTEM SET autovacuum = off")
        sql(server, "SELECT pg_reload_conf()")
    sql(src, SCHEMA)
    check = lab.run("check", "--source", src, "--target", dst)
    assert "statistics" in check.stdout and "ANALYZEd on the target" in check.stdout, check.stdout
    assert ("pg_dump --statistics-only" in check.stdout) == (dst_version >= 18), check.stdout
    state = lab.dir / f"st{src_version}-state"
    up = lab.run("upgrade", "--source", src, "--target", dst, "--state", str(state),
                 "--router", "manual", "--cutover", "manual", timeout=600)
    assert "tables analyzed on the target in" in up.stderr, up.stderr[-3000:]
    copied = dst_version >= 18
    if copied:
        assert "relations copied to the target (pg_dump --statistics-only)" in up.stderr, up.stderr[-3000:]
    else:
        assert "pg_dump --statistics-only" not in up.stderr, up.stderr[-3000:]
    assert "phase ReadyForCutover" in up.stdout or "ReadyForCutover" in up.stderr

    def analyzed(rel):
        return int(sql(dst, f"SELECT count(*) FROM pg_statistic WHERE starelid = '{rel}'::regclass"))
    for rel in ("public.orders", "public.events_2025", "public.events_2026", "public.orders_per_city",
                "public.kept", "public.fresh"):
        assert analyzed(rel) > 0, f"{rel} has no statistics on the target"
    # The partitioned root: statistics of the whole hierarchy (stainherit).
    assert int(sql(dst, "SELECT count(*) FROM pg_statistic WHERE starelid = 'public.events'::regclass "
                        "AND stainherit")) > 0
    # The extended statistics object was built, not only created.
    built = ("SELECT count(*) FROM pg_statistic_ext e JOIN pg_statistic_ext_data d ON d.stxoid = e.oid "
             "WHERE e.stxname = 'orders_city_zip' AND d.stxddependencies IS NOT NULL")
    assert sql(dst, built) == "1"
    # Which path ran: the source's statistics describe kept.v as it was at its ANALYZE (all 1).
    mcv = sql(dst, "SELECT most_common_vals::text FROM pg_stats WHERE schemaname = 'public' "
                   "AND tablename = 'kept' AND attname = 'v'")
    assert mcv == ("{1}" if copied else "{2}"), mcv
    status = lab.run("status", "--state", str(state)).stdout
    if copied:
        # ANALYZE only where the copy left nothing usable: fresh (never analyzed on the source),
        # orders (an extended statistics object), the view and the partitioned root.
        assert "relations copied (pg_dump --statistics-only)" in status, status
        line = next(l for l in status.splitlines() if l.startswith("statistics:"))
        analyzed_n = int(line.split("then ")[1].split()[0])
        assert 2 <= analyzed_n < 6, line
        print(f"{src_version}->{dst_version}: {line}")
    else:
        assert "statistics: 5 tables analyzed on the target" in status, status
    lab.run("abort", "--state", str(state))
