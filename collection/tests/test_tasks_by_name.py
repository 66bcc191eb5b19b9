"""Services queue two tasks by name (their task modules import the services, so importing the tasks back would
be a cycle): the names must be the registered tasks' names, or the messages would go to no task at all."""

from collection import tasks
from collection.alarms import notify
from collection.alarms import tasks as alarm_tasks
from collection.services import retention, rollups
from daqbroker_site.celery import app


def test_the_rollup_refresh_is_queued_under_its_tasks_registered_name():
    assert tasks.refresh_rollups_task.name == rollups.REFRESH_ROLLUPS_TASK
    assert rollups.REFRESH_ROLLUPS_TASK in app.tasks


def test_alarm_notifications_are_queued_under_the_delivery_tasks_registered_name():
    assert alarm_tasks.deliver_notification.name == notify.DELIVER_NOTIFICATION_TASK
    assert notify.DELIVER_NOTIFICATION_TASK in app.tasks


def test_the_follow_up_after_a_deletion_is_queued_under_its_tasks_registered_name():
    assert alarm_tasks.process_new_readings.name == retention.FOLLOW_UP_TASK
    assert retention.FOLLOW_UP_TASK in app.tasks
