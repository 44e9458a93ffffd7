"""Xen public header io/xenbus.h: the states a split driver's two halves move through.

Each half writes its own `state` node; the other watches it. Linux's xenbus and libxl
read the numbers, so they are Xen's exactly."""

from __future__ import annotations

XenbusStateUnknown = 0
XenbusStateInitialising = 1
XenbusStateInitWait = 2  # the back end's features are written; the front end may connect
XenbusStateInitialised = 3  # the front end's ring and channel are written
XenbusStateConnected = 4
XenbusStateClosing = 5
XenbusStateClosed = 6
XenbusStateReconfiguring = 7
XenbusStateReconfigured = 8
