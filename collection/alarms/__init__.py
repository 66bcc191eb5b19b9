"""Validation beyond ingest (spike checks) and alarms: rules, their evaluation, events and notifications.

* ``models``: SpikeCheck, AlarmRule, AlarmState, AlarmEvent, AlarmSubscription, AlarmNotification.
* ``evaluate``: threshold, rate-of-change and stale rules, evaluated after each ingest and periodically.
* ``notify``: recipients, the notification outbox, email and webhook delivery.
* ``tasks``: the Celery tasks that run all of the above, with derived channels, after each ingest.
"""
