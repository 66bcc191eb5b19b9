"""On SQLite, store readings in WITHOUT ROWID tables clustered on (channel_id, ts).

A rowid table plus the primary-key index stores every reading twice (~48 bytes); WITHOUT ROWID keeps
only the key's B-tree (~27 bytes) and inserts faster (shared/PERFORMANCE.md). Django cannot declare
this, so the tables are rebuilt here; ``collection.tests.test_storage`` checks that it stays so (a later
migration altering these tables on SQLite would rebuild them with a rowid).
"""

from django.db import migrations

TABLES = ("collection_sample", "collection_textsample")


def rebuild_without_rowid(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        for table in TABLES:
            cursor.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = %s", [table])
            (create_sql,) = cursor.fetchone()
            if "WITHOUT ROWID" in create_sql.upper():
                continue
            cursor.execute(f'ALTER TABLE "{table}" RENAME TO "{table}__rowid"')
            cursor.execute(create_sql + " WITHOUT ROWID")
            cursor.execute(f'INSERT INTO "{table}" SELECT * FROM "{table}__rowid"')
            cursor.execute(f'DROP TABLE "{table}__rowid"')


class Migration(migrations.Migration):
    dependencies = [("collection", "0001_initial")]

    operations = [migrations.RunPython(rebuild_without_rowid, migrations.RunPython.noop)]
