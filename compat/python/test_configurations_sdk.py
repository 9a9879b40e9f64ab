"""Automatic device management with the official Python service SDK:
azure-iot-hub's IoTHubConfigurationManager (create, get, list, update with
an etag, delete, test_configuration_queries) and what a configuration does
to a targeted twin."""

import time

import pytest
from msrest.exceptions import HttpOperationError

from azure.iot.hub import IoTHubConfigurationManager
from azure.iot.hub.models import (
    Configuration,
    ConfigurationContent,
    ConfigurationMetrics,
    ConfigurationQueriesTestInput,
    QuerySpecification,
    Twin,
)

from conftest import WAIT, new_key


def status_of(excinfo):
    return excinfo.value.response.status_code


@pytest.fixture(scope="module")
def configs(service_cs):
    return IoTHubConfigurationManager.from_connection_string(service_cs)


def wait_until(what, fn):
    """Calls fn until it returns something truthy (WAIT seconds at most)."""
    deadline = time.monotonic() + WAIT
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, "no %s within %ss" % (what, WAIT)
        time.sleep(0.2)


def test_configuration_lifecycle(configs, registry, device):
    run = device["id"]
    config_id = run + "-cfg"
    registry.update_twin(device["id"], Twin(tags={"pycfg": run}), "*")
    applied = "SELECT deviceId FROM devices WHERE configurations.[[%s]].status = 'Applied'" % config_id
    created = configs.create_configuration(
        Configuration(
            id=config_id,
            labels={"run": run},
            content=ConfigurationContent(device_content={"properties.desired.pyCfg": {"run": run, "n": 1}}),
            target_condition="tags.pycfg = '%s'" % run,
            priority=3,
            metrics=ConfigurationMetrics(queries={"applied": applied}),
        )
    )
    try:
        assert created.id == config_id
        assert created.etag
        assert created.priority == 3
        assert created.labels == {"run": run}
        assert created.content.device_content == {"properties.desired.pyCfg": {"run": run, "n": 1}}
        assert created.created_time_utc is not None

        got = configs.get_configuration(config_id)
        assert got.etag == created.etag
        assert got.target_condition == "tags.pycfg = '%s'" % run
        assert got.metrics.queries == {"applied": applied}

        listed = configs.get_configurations(max_count=100)
        assert config_id in [c.id for c in listed]

        # The configuration reaches the twin and is counted.
        def twin_configured():
            t = registry.get_twin(device["id"])
            return t if (t.properties.desired or {}).get("pyCfg") == {"run": run, "n": 1} else None

        wait_until("desired pyCfg on the targeted twin", twin_configured)
        def counted_once():
            c = configs.get_configuration(config_id)
            system = (c.system_metrics and c.system_metrics.results) or {}
            custom = (c.metrics and c.metrics.results) or {}
            ok = system.get("targetedCount") == 1 and system.get("appliedCount") == 1 and custom.get("applied") == 1
            return c if ok else None

        counted = wait_until("targetedCount 1, appliedCount 1 and the custom metric 1", counted_once)

        found = registry.query_iot_hub(
            QuerySpecification(query="SELECT * FROM devices WHERE configurations.[[%s]].status = 'Applied'" % config_id)
        )
        assert [item.device_id for item in found.items] == [device["id"]]

        # update_configuration with a stale etag is refused, with the current one it works.
        counted.priority = 7
        with pytest.raises(HttpOperationError) as excinfo:
            configs.update_configuration(counted, "AAAAAAAAAAE=" if created.etag != "AAAAAAAAAAE=" else "AAAAAAAAAAI=")
        assert status_of(excinfo) == 412
        assert configs.get_configuration(config_id).priority == 3
        updated = configs.update_configuration(counted, counted.etag)
        assert updated.priority == 7
        assert updated.etag and updated.etag != counted.etag
        assert configs.get_configuration(config_id).priority == 7
    finally:
        configs.delete_configuration(config_id)
    with pytest.raises(HttpOperationError) as excinfo:
        configs.get_configuration(config_id)
    assert status_of(excinfo) == 404
    # Deleting rolls nothing back.
    assert registry.get_twin(device["id"]).properties.desired["pyCfg"] == {"run": run, "n": 1}


def test_module_configuration(configs, registry, device):
    """A moduleContent configuration with a target condition in the form IoT
    Hub documents for modules ("from devices.modules where ...") reaches the
    module twin."""
    module_id = "pycfgmod"
    config_id = device["id"] + "-mod"
    registry.create_module_with_sas(device["id"], module_id, None, new_key(), new_key())
    registry.update_module_twin(device["id"], module_id, Twin(tags={"pycfgmod": config_id}), "*")
    configs.create_configuration(
        Configuration(
            id=config_id,
            content=ConfigurationContent(module_content={"properties.desired.pyModCfg": {"run": config_id}}),
            target_condition="from devices.modules where tags.pycfgmod = '%s'" % config_id,
            priority=0,
        )
    )
    try:

        def module_configured():
            t = registry.get_module_twin(device["id"], module_id)
            return (t.properties.desired or {}).get("pyModCfg") == {"run": config_id}

        wait_until("desired pyModCfg on the targeted module twin", module_configured)
        assert "pyModCfg" not in (registry.get_twin(device["id"]).properties.desired or {})
    finally:
        configs.delete_configuration(config_id)


def test_delete_configuration_with_a_stale_etag_is_refused(configs, device):
    config_id = device["id"] + "-etag"
    created = configs.create_configuration(
        Configuration(
            id=config_id,
            content=ConfigurationContent(device_content={"properties.desired.pyEtag": {"n": 1}}),
            target_condition="tags.pycfg = '%s'" % config_id,
            priority=0,
        )
    )
    try:
        with pytest.raises(HttpOperationError) as excinfo:
            configs.delete_configuration(config_id, "AAAAAAAAAAE=" if created.etag != "AAAAAAAAAAE=" else "AAAAAAAAAAI=")
        assert status_of(excinfo) == 412
        assert configs.get_configuration(config_id).id == config_id
        configs.delete_configuration(config_id, created.etag)
    finally:
        try:
            configs.delete_configuration(config_id)
        except HttpOperationError:
            pass
    with pytest.raises(HttpOperationError) as excinfo:
        configs.get_configuration(config_id)
    assert status_of(excinfo) == 404


def test_configuration_queries_valid(configs):
    res = configs.test_configuration_queries(
        ConfigurationQueriesTestInput(
            target_condition="tags.environment = 'prod' AND properties.reported.firmware.fwUpdateStatus = 'current'",
            custom_metric_queries={
                "current": "SELECT deviceId FROM devices WHERE properties.reported.firmware.fwUpdateStatus = 'current'",
                "applied": "SELECT deviceId FROM devices WHERE configurations.[[some-config]].status = 'Applied'",
            },
        )
    )
    assert not res.target_condition_error, res.target_condition_error
    assert not any(res.custom_metric_query_errors.values()), res.custom_metric_query_errors


def test_configuration_queries_invalid(configs):
    res = configs.test_configuration_queries(
        ConfigurationQueriesTestInput(
            target_condition="tags.environment = = 'prod'",
            custom_metric_queries={
                "good": "SELECT deviceId FROM devices WHERE properties.reported.x = 1",
                "broken": "SELECT deviceId FROM devices WHERE (",
            },
        )
    )
    assert res.target_condition_error, "an invalid target condition got no targetConditionError"
    errors = res.custom_metric_query_errors or {}
    assert errors.get("broken"), "an invalid metric query got no error: %r" % errors
    assert not errors.get("good"), "a valid metric query got an error: %r" % errors
