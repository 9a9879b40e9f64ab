"""azure-iot-hub (IoTHubRegistryManager, IoTHubJobManager) against the hub."""

import datetime
import time
import uuid

import pytest
from msrest.exceptions import HttpOperationError

from azure.iot.hub import IoTHubJobManager
from azure.iot.hub.models import (
    CloudToDeviceMethod,
    JobRequest,
    QuerySpecification,
    Twin,
    TwinProperties,
)

from conftest import WAIT, new_key


def status_of(excinfo):
    return excinfo.value.response.status_code


def test_registry_lifecycle(registry):
    device_id = "py-registry-" + uuid.uuid4().hex[:8]
    created = registry.create_device_with_sas(device_id, new_key(), new_key(), "enabled")
    assert created.device_id == device_id
    assert created.status == "enabled"
    assert created.etag

    got = registry.get_device(device_id)
    assert got.device_id == device_id
    assert got.connection_state == "Disconnected"

    primary, secondary = new_key(), new_key()
    updated = registry.update_device_with_sas(device_id, got.etag, primary, secondary, "disabled")
    assert updated.status == "disabled"
    assert updated.authentication.symmetric_key.primary_key == primary
    assert updated.etag != got.etag

    with pytest.raises(HttpOperationError) as stale:
        registry.update_device_with_sas(device_id, got.etag, new_key(), new_key(), "enabled")
    assert status_of(stale) == 412

    listed = [d.device_id for d in registry.get_devices(max_number_of_devices=1000)]
    assert device_id in listed

    with pytest.raises(HttpOperationError) as taken:
        registry.create_device_with_sas(device_id, new_key(), new_key(), "enabled")
    assert status_of(taken) == 409

    registry.delete_device(device_id)
    with pytest.raises(HttpOperationError) as gone:
        registry.get_device(device_id)
    assert status_of(gone) == 404


def test_unknown_device_is_404(registry):
    for call in (
        lambda: registry.get_device("py-no-such-device"),
        lambda: registry.get_twin("py-no-such-device"),
        lambda: registry.invoke_device_method(
            "py-no-such-device", CloudToDeviceMethod(method_name="rebootDevice", payload={})
        ),
    ):
        with pytest.raises(HttpOperationError) as missing:
            call()
        assert status_of(missing) == 404


def test_twin_update_replace_and_etag(registry, device):
    twin = registry.get_twin(device["id"])
    assert twin.device_id == device["id"]
    assert twin.etag

    patched = registry.update_twin(
        device["id"],
        Twin(tags={"site": "lab"}, properties=TwinProperties(desired={"interval": 5})),
        twin.etag,
    )
    assert patched.tags == {"site": "lab"}
    assert patched.properties.desired["interval"] == 5
    assert patched.etag != twin.etag

    with pytest.raises(HttpOperationError) as stale:
        registry.update_twin(device["id"], Twin(tags={"site": "other"}), twin.etag)
    assert status_of(stale) == 412
    assert registry.get_twin(device["id"]).tags == {"site": "lab"}

    replaced = registry.replace_twin(
        device["id"],
        Twin(tags={"room": "7"}, properties=TwinProperties(desired={"mode": "eco"})),
    )
    assert replaced.tags == {"room": "7"}
    assert replaced.properties.desired.get("mode") == "eco"
    assert "interval" not in replaced.properties.desired


def test_query_pages(registry, hostname):
    tag = "pages-" + uuid.uuid4().hex[:8]
    ids = ["py-query-%s-%d" % (tag, i) for i in range(5)]
    for device_id in ids:
        registry.create_device_with_sas(device_id, new_key(), new_key(), "enabled")
        registry.update_twin(device_id, Twin(tags={"batch": tag}), "*")
    try:
        spec = QuerySpecification(query="SELECT * FROM devices WHERE tags.batch = '%s'" % tag)
        seen, token, pages = [], None, 0
        while True:
            result = registry.query_iot_hub(spec, token, 2)
            pages += 1
            assert len(result.items) <= 2
            seen.extend(item.device_id for item in result.items)
            token = result.continuation_token
            if not token:
                break
            assert pages < 10, "the continuation never ended"
        assert sorted(seen) == sorted(ids)
        assert pages == 3
    finally:
        for device_id in ids:
            registry.delete_device(device_id)


def wait_job(jobs, job_id, statuses):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        job = jobs.get_scheduled_job(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError("job %s not %s within %ss (last: %s)" % (job_id, statuses, WAIT, job.status))


def test_scheduled_jobs(service_cs, registry, device):
    jobs = IoTHubJobManager.from_connection_string(service_cs)
    condition = "deviceId IN ['%s']" % device["id"]

    twin_job = "py-twin-" + uuid.uuid4().hex[:8]
    created = jobs.create_scheduled_job(
        twin_job,
        JobRequest(
            job_id=twin_job,
            type="scheduleUpdateTwin",
            start_time=datetime.datetime.now(datetime.timezone.utc).isoformat(),
            update_twin=Twin(etag="*", tags={"updatedBy": "job"}),
            query_condition=condition,
            max_execution_time_in_seconds=60,
        ),
    )
    assert created.job_id == twin_job
    done = wait_job(jobs, twin_job, ("completed", "failed"))
    assert done.status == "completed"
    assert registry.get_twin(device["id"]).tags.get("updatedBy") == "job"

    # A method job for a device that is not connected waits for it (connect
    # timeout) until it is cancelled.
    method_job = "py-method-" + uuid.uuid4().hex[:8]
    jobs.create_scheduled_job(
        method_job,
        JobRequest(
            job_id=method_job,
            type="scheduleDeviceMethod",
            start_time=(
                datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=10)
            ).isoformat(),
            cloud_to_device_method=CloudToDeviceMethod(
                method_name="rebootDevice", payload={}, response_timeout_in_seconds=30
            ),
            query_condition=condition,
            max_execution_time_in_seconds=60,
        ),
    )
    assert jobs.get_scheduled_job(method_job).status in ("queued", "scheduled")
    jobs.cancel_scheduled_job(method_job)
    assert wait_job(jobs, method_job, ("cancelled",)).status == "cancelled"

    with pytest.raises(HttpOperationError) as missing:
        jobs.get_scheduled_job("py-no-such-job")
    assert status_of(missing) == 404
