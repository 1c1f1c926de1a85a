"""gateway.testing's conformance suite against the built-in ``filedrop`` connector and its
simulated department: the common checks, and the result-file channel (``pull_updates`` returns
a result until ``ack_update`` archives or quarantines it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from gateway_filedrop.connector import FiledropConnector

from gateway.config.models import DepartmentConfig
from gateway.connector import Envelope, Receipt
from gateway.simulators.filedrop_department import (
    FiledropDepartmentState,
    FiledropSimulatorSettings,
    encode_result,
)
from gateway.testing import ConnectorConformance, make_department

FILEDROP_STATUS_MAP = {
    "1": "accepted",
    "2": "not_accepted",
    "3": "supplement_required",
    "4": "rejected",
    "9": "approved",
}


class TestFiledropConformance(ConnectorConformance):
    """The file-drop connector on a local exchange folder the simulator watches."""

    connector_class = FiledropConnector
    plugin_name = "filedrop"
    department_statuses = tuple(FILEDROP_STATUS_MAP)
    pushes_callbacks = False  # results come as files only
    pulls_results = True
    transport = "local"

    @pytest.fixture
    async def department_system(self) -> AsyncIterator[FiledropDepartmentState]:
        # the department decides only when produce_result says so: its own decisions and inbox
        # scans are an hour away
        settings = FiledropSimulatorSettings(
            transport=self.transport, decision_delay_seconds=3600, scan_interval_seconds=3600
        )
        async with FiledropDepartmentState(settings=settings).running() as state:
            yield state

    def department_config(self, system: FiledropDepartmentState) -> DepartmentConfig:
        return make_department(
            "civil",
            connector="filedrop",
            timeout_seconds=2.0,
            status_map=FILEDROP_STATUS_MAP,
            options={
                **system.connector_options(),
                "result": {"format": "json", "complete": "stable", "stable_seconds": 0},
            },
        )

    async def produce_result(
        self, system: FiledropDepartmentState, receipt: Receipt, envelope: Envelope
    ) -> bool:
        await system.scan()  # the department takes the request into processed/
        case = system.cases[envelope.idempotency_key]
        record = system.result_record(case, "1", final=False)  # 受理: accepted
        await system.write_file(f"{case.case_id}-1.json", encode_result(record, "json"))
        return True


class TestFiledropSftpConformance(TestFiledropConformance):
    """The same over SFTP (a real server on loopback): an unreachable server is transient."""

    transport = "sftp"
