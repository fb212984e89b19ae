"""A nightly SkillRank batch for Apache Airflow 2: an example to copy (docs/operations.md).

Ingests the night's crawl, then prepare, train, evaluate and report in one Spark application
(`all --from prepare`), then `maintain`. Each task retries itself while the work directory
is busy (exit 75: an analyst's `sql` shell, a data engineer's rerun) and otherwise ends with
the stage's exit code: a train run rejected by the promotion gates (exit 3) fails the task,
so Airflow's alerting tells someone to look (`runs show RUN_ID`, then `runs promote RUN_ID`
if it is good), and the views keep showing the previous run meanwhile. Paths are examples.
"""

from __future__ import annotations

from datetime import datetime

from airflow import DAG
from airflow.operators.bash import BashOperator

SKILLRANK = "/opt/skillrank/spark-submit.sh"
WORKDIR = "/data/skillrank"
CRAWL = "/data/crawls/{{ ds }}"  # the night's crawl files (Airflow fills in the date)
BUSY = 75  # the work directory is in use: try again later
BUSY_RETRIES, BUSY_WAIT_SECONDS = 6, 600


def skillrank(stage: str, *args: str) -> str:
    """The bash command of one stage, retried while the work directory is busy."""
    command = " ".join([SKILLRANK, stage, "--workdir", WORKDIR, *args])
    return (
        f"for attempt in $(seq {BUSY_RETRIES}); do {command}; code=$?;"
        f' [ "$code" -ne {BUSY} ] && exit "$code"; sleep {BUSY_WAIT_SECONDS}; done; exit {BUSY}'
    )


with DAG(
    dag_id="skillrank_nightly",
    schedule="0 2 * * *",
    start_date=datetime(2026, 12, 1),
    catchup=False,
    default_args={"retries": 0, "email_on_failure": True},
) as dag:
    ingest = BashOperator(task_id="ingest", bash_command=skillrank("ingest", "--input", CRAWL))
    publish = BashOperator(
        task_id="prepare_train_evaluate_report",
        bash_command=skillrank("all", "--from", "prepare"),
    )
    maintain = BashOperator(task_id="maintain", bash_command=skillrank("maintain"))
    ingest >> publish >> maintain
