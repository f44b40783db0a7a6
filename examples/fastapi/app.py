"""Tasks and AI-chat HTTP API: one Better Auth user per request, one RLS-scoped session each.

Run: uvicorn --factory app:create_app (see README.md for the environment it reads).
"""

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

import todo_rls
from better_auth_jwt import AuthSettings, TokenVerifier, authenticated_user_id
from body_limit import BodySizeLimit
from schemas import (
    ConversationIn,
    ConversationOut,
    MessageIn,
    MessageOut,
    PageOut,
    TaskIn,
    TaskOut,
    TaskPatch,
)
from todo_rls import chat, tasks
from todo_rls.pagination import MAX_PAGE_SIZE


async def scoped_db(
    request: Request, user_id: Annotated[str, Depends(authenticated_user_id)]
) -> AsyncIterator[AsyncSession]:
    """A session whose every transaction sees only the caller's rows (RLS via app.user_id)."""
    engine = request.app.state.engine
    # expire_on_commit=False: rows returned after commit are serialized without a reload.
    async with todo_rls.scoped_async_session(engine, user_id, expire_on_commit=False) as session:
        yield session


Db = Annotated[AsyncSession, Depends(scoped_db)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]


router = APIRouter()


@router.get("/tasks", response_model=PageOut[TaskOut])
async def list_tasks(
    db: Db, completed: bool | None = None, after: str | None = None, limit: Limit = 20
) -> PageOut[TaskOut]:
    page = await db.run_sync(tasks.list_page, completed=completed, after=after, limit=limit)
    return PageOut(items=[TaskOut.model_validate(t) for t in page.items], next=page.next_cursor)


@router.post("/tasks", status_code=status.HTTP_201_CREATED, response_model=TaskOut)
async def create_task(db: Db, body: TaskIn) -> TaskOut:
    task = await db.run_sync(tasks.create, body.title, body.description)
    await db.commit()
    return TaskOut.model_validate(task)


@router.get("/tasks/{task_id}", response_model=TaskOut)
async def get_task(db: Db, task_id: uuid.UUID) -> TaskOut:
    return TaskOut.model_validate(await db.run_sync(tasks.get, task_id))


@router.patch("/tasks/{task_id}", response_model=TaskOut)
async def update_task(db: Db, task_id: uuid.UUID, body: TaskPatch) -> TaskOut:
    changes = body.model_dump(include=body.model_fields_set)
    task = await db.run_sync(lambda s: tasks.update(s, task_id, **changes))
    await db.commit()
    return TaskOut.model_validate(task)


@router.delete("/tasks/{task_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_task(db: Db, task_id: uuid.UUID) -> Response:
    await db.run_sync(tasks.delete, task_id)
    await db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/conversations", response_model=PageOut[ConversationOut])
async def list_conversations(
    db: Db, after: str | None = None, limit: Limit = 20
) -> PageOut[ConversationOut]:
    page = await db.run_sync(lambda s: chat.list_conversations(s, after=after, limit=limit))
    items = [ConversationOut.model_validate(c) for c in page.items]
    return PageOut(items=items, next=page.next_cursor)


@router.post("/conversations", status_code=status.HTTP_201_CREATED, response_model=ConversationOut)
async def create_conversation(db: Db, body: ConversationIn) -> ConversationOut:
    conversation = await db.run_sync(chat.create_conversation, body.title)
    await db.commit()
    return ConversationOut.model_validate(conversation)


@router.get("/conversations/{conversation_id}", response_model=ConversationOut)
async def get_conversation(db: Db, conversation_id: uuid.UUID) -> ConversationOut:
    conversation = await db.run_sync(chat.get_conversation, conversation_id)
    return ConversationOut.model_validate(conversation)


@router.patch("/conversations/{conversation_id}", response_model=ConversationOut)
async def rename_conversation(
    db: Db, conversation_id: uuid.UUID, body: ConversationIn
) -> ConversationOut:
    conversation = await db.run_sync(chat.rename_conversation, conversation_id, body.title)
    await db.commit()
    return ConversationOut.model_validate(conversation)


@router.delete("/conversations/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_conversation(db: Db, conversation_id: uuid.UUID) -> Response:
    await db.run_sync(chat.delete_conversation, conversation_id)
    await db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/conversations/{conversation_id}/messages", response_model=PageOut[MessageOut])
async def list_messages(
    db: Db, conversation_id: uuid.UUID, after: str | None = None, limit: Limit = 50
) -> PageOut[MessageOut]:
    page = await db.run_sync(
        lambda s: chat.list_messages(s, conversation_id, after=after, limit=limit)
    )
    items = [MessageOut.model_validate(m) for m in page.items]
    return PageOut(items=items, next=page.next_cursor)


@router.post(
    "/conversations/{conversation_id}/messages",
    status_code=status.HTTP_201_CREATED,
    response_model=MessageOut,
)
async def add_message(db: Db, conversation_id: uuid.UUID, body: MessageIn) -> MessageOut:
    message = await db.run_sync(chat.add_message, conversation_id, body.role, body.content)
    await db.commit()
    return MessageOut.model_validate(message)


def create_app() -> FastAPI:
    """The app, configured from DATABASE_URL (the app login role) and BETTER_AUTH_URL."""
    verifier = TokenVerifier(AuthSettings.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = todo_rls.create_async_engine()
        try:
            # Fail at startup, not on the first request, if DATABASE_URL's role is one RLS
            # would not bind (superuser, BYPASSRLS, table owner): the scoped session refuses
            # it; or if the database does not hold TODO_RLS_SIGNING_KEY: the verifier does.
            async with todo_rls.scoped_async_session(engine, "startup-check") as session:
                connection = await session.connection()  # begins, and checks the role
                await connection.execute(text("select todo_rls.current_user_id()"))
            app.state.engine, app.state.token_verifier = engine, verifier
            yield
        finally:
            await engine.dispose()

    app = FastAPI(title="todo-rls example", lifespan=lifespan)
    app.add_middleware(BodySizeLimit)
    app.include_router(router)
    app.add_exception_handler(todo_rls.NotFoundError, _error_response(status.HTTP_404_NOT_FOUND))
    app.add_exception_handler(
        todo_rls.InvalidInputError, _error_response(status.HTTP_422_UNPROCESSABLE_CONTENT)
    )
    app.add_exception_handler(todo_rls.UnknownUserError, _signed_out)
    return app


def _error_response(code: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(_request: Request, error: Exception) -> JSONResponse:
        # NotFoundError reads the same for a missing row and another user's row.
        return JSONResponse({"detail": str(error)}, status_code=code)

    return handler


async def _signed_out(_request: Request, _error: Exception) -> JSONResponse:
    # A valid token of a user Better Auth has deleted since: its writes fail on the foreign key
    # to "user", and the caller is answered as if the token were bad (reads just find nothing).
    return JSONResponse(
        {"detail": "the token's user no longer exists; sign in again"},
        status_code=status.HTTP_401_UNAUTHORIZED,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
