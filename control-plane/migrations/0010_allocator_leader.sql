-- One share allocator across replicas (`allocation`): the replica holding
-- the allocator's advisory lock writes where the others reach it.
CREATE TABLE allocator_leader (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    url TEXT NOT NULL,
    since_ms BIGINT NOT NULL
);
