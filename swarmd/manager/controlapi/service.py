"""Services and tasks: the calls exist on the wire; this manager serves none of them yet."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from swarmd.errors import SwarmError
from swarmd.manager.controlapi.base import ControlAPI, Ctx
from swarmd.server import abort_on_error

NOT_YET = "services are not supported by this manager yet"


def _refuse() -> NoReturn:
    raise SwarmError(NOT_YET, grpc.StatusCode.FAILED_PRECONDITION)


class ServiceAPI(ControlAPI):
    @abort_on_error
    def CreateService(self, request: Any, context: Ctx) -> Any:
        _refuse()

    @abort_on_error
    def GetService(self, request: Any, context: Ctx) -> Any:
        _refuse()

    @abort_on_error
    def ListServices(self, request: Any, context: Ctx) -> Any:
        _refuse()

    @abort_on_error
    def UpdateService(self, request: Any, context: Ctx) -> Any:
        _refuse()

    @abort_on_error
    def RemoveService(self, request: Any, context: Ctx) -> Any:
        _refuse()

    @abort_on_error
    def ListTasks(self, request: Any, context: Ctx) -> Any:
        _refuse()

    @abort_on_error
    def GetTask(self, request: Any, context: Ctx) -> Any:
        _refuse()
