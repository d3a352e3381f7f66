# On the board: directories and files, for BoardTransport.makedirs and .remove.

import os


def makedirs(path):
    """Create path and its parents ("a/b/c"); existing ones are fine."""
    p = ""
    for c in path.split("/"):
        p = p + "/" + c if p else c
        try:
            os.mkdir(p)
        except OSError:
            pass


def remove(paths):
    """Remove the files in paths (a list) that exist; missing ones are fine."""
    for f in paths:
        try:
            os.remove(f)
        except OSError:
            pass
