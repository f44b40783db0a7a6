"""The API's request and response bodies (the DAL validates the values; see todo_rls.tasks)."""

import uuid
from datetime import datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class TaskOut(Out):
    id: uuid.UUID
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime


class ConversationOut(Out):
    id: uuid.UUID
    title: str | None
    created_at: datetime
    updated_at: datetime


class MessageOut(Out):
    id: uuid.UUID
    conversation_id: uuid.UUID
    role: str
    content: str
    created_at: datetime


class PageOut(BaseModel, Generic[T]):
    items: list[T]
    next: str | None  # pass as ?after= to get the next page; null on the last page


class TaskIn(BaseModel):
    title: str
    description: str | None = None


class TaskPatch(BaseModel):
    """Only the fields sent are changed; "description": null clears it."""

    title: str | None = None
    description: str | None = None
    completed: bool | None = None


class ConversationIn(BaseModel):
    title: str | None = None


class MessageIn(BaseModel):
    role: str
    content: str
