from django.db import migrations


def create_counter(apps, schema_editor):
    Counter = apps.get_model("controlplane", "Counter")
    Counter.objects.get_or_create(name="resource_version", defaults={"value": 0})


class Migration(migrations.Migration):
    """The resourceVersion counter row exists before the first write, so writers
    only ever UPDATE it (and queue on its row lock) and never race to INSERT it."""

    dependencies = [("controlplane", "0001_initial")]
    operations = [migrations.RunPython(create_counter, migrations.RunPython.noop)]
