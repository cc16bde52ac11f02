"""The action table (``ACTION_SPECS``, app/contract/jobs.py): which actions create a task, which Celery task runs
each one's job and which message class it travels as. What the gateway does with it: tests/gateway/test_actions.py
(its handlers, submit, recovery); what the worker does: tests/worker/test_task_registration.py."""
from __future__ import annotations

import pytest

from app.contract.jobs import (
    ACTION_SPECS,
    BACKGROUNDS_TASK_NAME,
    DESCRIBE_TASK_NAME,
    GENERATE_TASK_NAME,
    IMAGES_TASK_NAME,
    JOB_TASK_NAMES,
    JOB_TASKS,
    JOB_VERSION,
    MASK_TASK_NAME,
    MODIFY_TASK_NAME,
    REMOVE_CONTENTS_TASK_NAME,
    RESIZE_TASK_NAME,
    RESTORE_FACES_TASK_NAME,
    SWITCH_FACE_TASK_NAME,
    ActionSpec,
    BackgroundsJobMessage,
    BaseJob,
    DescribeJobMessage,
    ImagesJobMessage,
    JobMessage,
    JobTask,
    MaskJobMessage,
    ModifyJobMessage,
    NoTaskAction,
    RemoveContentsJobMessage,
    ResizeJobMessage,
    RestoreFacesJobMessage,
    SubModelRef,
    SwitchFaceJobMessage,
    action_table,
    task_for,
    task_name_for,
)
from app.contract.limits import MASK_ACTIONS

#: What each task-creating action is run by, written out: a change of the table must be a deliberate one. A new
#: action adds its row here, and a sample of a new job message class to SAMPLE_JOBS (docs/architecture.md).
EXPECTED_TASKS = {"GenerateFromMannequin": (GENERATE_TASK_NAME, JobMessage),
                  **{action: (MASK_TASK_NAME, MaskJobMessage) for action in MASK_ACTIONS},
                  "ResizeImage": (RESIZE_TASK_NAME, ResizeJobMessage),
                  "RestoreFaces": (RESTORE_FACES_TASK_NAME, RestoreFacesJobMessage),
                  "SwitchFace": (SWITCH_FACE_TASK_NAME, SwitchFaceJobMessage),
                  "GenerateBackgrounds": (BACKGROUNDS_TASK_NAME, BackgroundsJobMessage),
                  "ModifyMaskedPixels": (MODIFY_TASK_NAME, ModifyJobMessage),
                  "RemoveContents": (REMOVE_CONTENTS_TASK_NAME, RemoveContentsJobMessage),
                  "DescribeImages": (DESCRIBE_TASK_NAME, DescribeJobMessage),
                  "GenerateImages": (IMAGES_TASK_NAME, ImagesJobMessage)}
#: One message of each job message class, as a worker would receive it.
SAMPLE_JOBS = {JobMessage: JobMessage(task_uid="u" * 21, main_model="m", seed=1, width=64, height=64,
                                      batch_size=1, mannequin_image="a" * 64, refine_upscaler="up"),
               MaskJobMessage: MaskJobMessage(task_uid="u" * 21, action="RemoveBackground", engine="e",
                                              images=["a" * 64]),
               ResizeJobMessage: ResizeJobMessage(task_uid="u" * 21, image="a" * 64, width=4096, height=64,
                                                  upscaler="up"),
               RestoreFacesJobMessage: RestoreFacesJobMessage(task_uid="u" * 21, image="a" * 64, main_model="m",
                                                              strength=0.5, seed=7),
               SwitchFaceJobMessage: SwitchFaceJobMessage(task_uid="u" * 21, image="a" * 64, face_index=2,
                                                          new_face="b" * 64, main_model="m", adapter="ip", seed=7),
               BackgroundsJobMessage: BackgroundsJobMessage(task_uid="u" * 21, main_model="m", seed=1, width=64,
                                                            height=64, batch_size=1, mannequin_image="a" * 64),
               ModifyJobMessage: ModifyJobMessage(task_uid="u" * 21, main_model="m", seed=1, width=96, height=64,
                                                  batch_size=1, mannequin_image="a" * 64, clothes_mask="b" * 64,
                                                  mask_blur=0),
               RemoveContentsJobMessage: RemoveContentsJobMessage(task_uid="u" * 21, image="a" * 64, mask="b" * 64,
                                                                  invert=True, mask_blur=3, eraser="lama"),
               DescribeJobMessage: DescribeJobMessage(task_uid="u" * 21, images=["a" * 64, "b" * 64],
                                                      describer="d", language="fr"),
               ImagesJobMessage: ImagesJobMessage(task_uid="u" * 21, main_model="m", seed=1, width=64, height=64,
                                                  batch_size=1, tileable=True)}
GATEWAY_ONLY = ("ListTasksDetails", "ListModels", "ListRunningTasks", "ListControlNets", "CancelTask",
                "CreatePersona", "ListPersonas", "DeletePersona")


def test_the_table_names_every_action_and_what_runs_each():
    assert set(ACTION_SPECS) == set(EXPECTED_TASKS) | set(GATEWAY_ONLY)
    assert all(name == spec.name for name, spec in ACTION_SPECS.items())
    creating = {name: (spec.task.name, spec.task.job) for name, spec in ACTION_SPECS.items() if spec.creates_task}
    assert creating == EXPECTED_TASKS
    assert not any(ACTION_SPECS[name].creates_task or ACTION_SPECS[name].task for name in GATEWAY_ONLY)


def test_task_name_for_looks_up_the_table():
    for action, (task_name, job) in EXPECTED_TASKS.items():
        assert task_name_for(action) == task_name
        assert task_for(action) == JobTask(task_name, job)


@pytest.mark.parametrize("action, what", [(name, "creates no task") for name in GATEWAY_ONLY]
                         + [("CropImage", "is not an action"), ("", "is not an action")])
def test_an_action_without_a_task_has_no_celery_task(action, what):
    """Not a default task (the old ``atelier.generate`` for anything not a mask action): a clear error."""
    with pytest.raises(NoTaskAction, match=f"'{action}' {what}: no Celery task runs it"):
        task_name_for(action)
    assert issubclass(NoTaskAction, LookupError)


def test_the_workers_register_one_celery_task_per_distinct_name():
    assert JOB_TASK_NAMES == tuple(dict.fromkeys(task_name for task_name, _ in EXPECTED_TASKS.values()))
    assert [t.name for t in JOB_TASKS] == list(JOB_TASK_NAMES)
    assert {spec.task for spec in ACTION_SPECS.values() if spec.task} == set(JOB_TASKS)


def test_every_job_message_carries_its_version_and_task_and_travels_as_json():
    assert set(SAMPLE_JOBS) == {task.job for task in JOB_TASKS}
    for cls, job in SAMPLE_JOBS.items():
        assert issubclass(cls, BaseJob)
        wire = job.to_wire()
        assert (wire["v"], wire["task_uid"]) == (JOB_VERSION, "u" * 21)
        assert list(wire)[:2] == ["v", "task_uid"]  # the fields every worker reads first, first
        assert cls.model_validate(wire) == job


def test_a_table_that_contradicts_itself_is_refused():
    crop = JobTask("atelier.crop", JobMessage)
    with pytest.raises(ValueError, match="listed twice"):
        action_table(ActionSpec("CropImage", crop), ActionSpec("CropImage"))
    rotate = JobTask("atelier.crop", MaskJobMessage)
    with pytest.raises(ValueError, match="several job message classes"):  # one entry point reads one message class
        action_table(ActionSpec("CropImage", crop), ActionSpec("RotateImage", rotate))
    table = action_table(ActionSpec("CropImage", crop), ActionSpec("RotateImage", crop), ActionSpec("ListThings"))
    assert [s.creates_task for s in table.values()] == [True, True, False]


def test_a_submodel_may_carry_a_per_request_image():
    assert SubModelRef(model_code="lora").image is None  # LoRA, Embedding, HyperNetwork: none
    ref = SubModelRef(model_code="ip-adapter", image="b" * 64)
    assert SubModelRef.model_validate(ref.model_dump(mode="json")).image == "b" * 64
    assert SubModelRef.model_validate({"model_code": "lora", "lora_weight": 0.5}).image is None  # older messages
