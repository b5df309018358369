"""The embedded broker: kombu's filesystem transport, with messages written atomically.

kombu's filesystem channel opens a message file under its final name and then
writes it, while a consumer in another process moves and reads any file with a
matching name. Under load a worker read a file that was still empty, failed to
decode it, and exited (seen with 1,000 simulated agents). Here a message is
written under a name consumers ignore and renamed into place once complete:
``os.replace`` is atomic within a directory, so a consumer sees all of it or none.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot: consumers match "<stamp>_<uuid>.<queue>.msg", which this is not.
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
