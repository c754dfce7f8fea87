"""Generated images for the CNNs (BOOK.md §4, §17) and Go-like board positions (§4.8); nothing
is downloaded and everything is a pure function of the generator's seed.

`shapes_dataset` stands in for the book's food-classification images: one class per kind of
shape (filled square, frame, disk, ring, triangle, diamond, plus, cross, horizontal / vertical /
diagonal line -- 11 kinds, as many as the food data set's classes), drawn at a random position
and scale, in a random colour, over Gaussian noise. A class is a local pattern that can be
anywhere in the image, which is what convolution's parameter sharing (§4) is for.

`go_positions` makes random positions on a 19 x 19 board with a move a simple rule picks
(the empty point whose four neighbours are all the player's own stones), so a tiny policy
network has something learnable in a few seconds.
"""
import torch

SHAPES = ("square", "frame", "disk", "ring", "triangle", "diamond", "plus", "cross", "hline",
          "vline", "diagonal")


def _shape_mask(kind, dx, dy, r, hw):
    """Boolean mask of one kind of shape. dx, dy: (n, H, W) pixel-centre offsets from each
    shape's centre; r: (n, 1, 1) half-size; hw: (n, 1, 1) half-width of strokes."""
    box = torch.maximum(dx.abs(), dy.abs())
    inside = box <= r
    if kind == "square":
        return inside
    if kind == "frame":
        return inside & (box > r - 2 * hw)
    dist2 = dx * dx + dy * dy
    if kind == "disk":
        return dist2 <= r * r
    if kind == "ring":
        return (dist2 <= r * r) & (dist2 > (r - 2 * hw) ** 2)
    if kind == "triangle":  # apex up (rows grow downwards)
        return inside & (dx.abs() <= (dy + r) / 2)
    if kind == "diamond":
        return dx.abs() + dy.abs() <= r
    if kind == "plus":
        return inside & ((dx.abs() <= hw) | (dy.abs() <= hw))
    if kind == "cross":
        return inside & (((dx - dy).abs() <= 1.4 * hw) | ((dx + dy).abs() <= 1.4 * hw))
    if kind == "hline":
        return inside & (dy.abs() <= hw)
    if kind == "vline":
        return inside & (dx.abs() <= hw)
    if kind == "diagonal":
        return inside & ((dx - dy).abs() <= 1.4 * hw)
    raise ValueError(f"unknown shape kind {kind!r}")


def shapes_dataset(n, size=16, channels=3, classes=11, generator=None, noise=0.1):
    """(images, labels): n float32 images (n, channels, size, size) and int64 labels in
    [0, classes) (classes <= 11): label k is SHAPES[k], drawn with half-size between 0.2 and 0.4 of the image
    (at least 2.5 pixels), at a random position where it fits, in a random colour (each channel
    0.4 to 1.0), over N(0, noise^2) pixel noise."""
    if not 1 <= classes <= len(SHAPES):
        raise ValueError(f"shapes_dataset: classes must be 1..{len(SHAPES)}, got {classes}")
    if size < 8:
        raise ValueError(f"shapes_dataset: size must be at least 8 pixels, got {size}")
    g = generator
    labels = torch.randint(0, classes, (n,), generator=g)
    r = (0.2 + 0.2 * torch.rand(n, generator=g)) * size
    r = r.clamp(min=2.5)
    # Centres where the whole shape fits: [r, size - r].
    cx = r + torch.rand(n, generator=g) * (size - 2 * r)
    cy = r + torch.rand(n, generator=g) * (size - 2 * r)
    hw = (0.18 * r).clamp(min=0.8)  # stroke half-width: every stroke covers a pixel
    colour = 0.4 + 0.6 * torch.rand(n, channels, generator=g)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    images = noise * torch.randn(n, channels, size, size, generator=g)
    for k in range(classes):
        idx = (labels == k).nonzero().flatten()
        if idx.numel() == 0:
            continue
        dx = coords.view(1, 1, size) - cx[idx].view(-1, 1, 1)
        dy = coords.view(1, size, 1) - cy[idx].view(-1, 1, 1)
        mask = _shape_mask(SHAPES[k], dx.expand(-1, size, -1), dy.expand(-1, -1, size),
                           r[idx].view(-1, 1, 1), hw[idx].view(-1, 1, 1))
        images[idx] += mask.unsqueeze(1).float() * colour[idx].view(-1, channels, 1, 1)
    return images, labels


def go_positions(n, planes=4, generator=None, board=19, density=0.08):
    """(planes, moves): n random Go-like positions as float32 (n, planes, board, board) input
    planes (AlphaGo-style, §4.8) and the target move as an int64 index into board * board.

    Planes: 0 the player's own stones, 1 the opponent's, 2 empty points, 3 all ones (AlphaGo's
    constant plane: with zero padding it tells the network where the board's edge is); planes
    from 4 on stay zero (AlphaGo's other expert features -- liberties, ladders, move history --
    are beyond generated data). At least 4 planes.

    Each position scatters stones of both colours (each point own / opponent with probability
    `density`), then plants one empty point with own stones on all four sides. The move is the
    empty point with the most own stones among its four neighbours; positions where that point
    is not unique are drawn again, so the planted point is the answer. No capture rules: the
    positions look like Go, they need not be legal games."""
    if planes < 4:
        raise ValueError(f"go_positions: planes must be at least 4, got {planes}")
    g = generator
    boards, moves, have = [], [], 0
    while have < n:
        m = n - have + 8
        u = torch.rand(m, board, board, generator=g)
        state = torch.zeros(m, board, board, dtype=torch.int64)  # 0 empty, 1 own, 2 opponent
        state[u < density] = 1
        state[(u >= density) & (u < 2 * density)] = 2
        # Plant an "eye": an interior empty point with own stones on its four sides.
        row = torch.randint(1, board - 1, (m,), generator=g)
        col = torch.randint(1, board - 1, (m,), generator=g)
        rows = torch.arange(m)
        state[rows, row, col] = 0
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            state[rows, row + dr, col + dc] = 1
        own = torch.nn.functional.pad((state == 1).float(), (1, 1, 1, 1))
        neighbours = (own[:, :-2, 1:-1] + own[:, 2:, 1:-1] + own[:, 1:-1, :-2] +
                      own[:, 1:-1, 2:])
        score = torch.where(state == 0, neighbours, torch.full_like(neighbours, -1.0))
        flat = score.flatten(1)
        best = flat.max(dim=1)
        unique = (flat == best.values[:, None]).sum(dim=1) == 1
        boards.append(state[unique])
        moves.append(best.indices[unique])
        have += int(unique.sum())
    state = torch.cat(boards)[:n]
    move = torch.cat(moves)[:n]
    x = torch.zeros(n, planes, board, board)
    x[:, 0] = (state == 1).float()
    x[:, 1] = (state == 2).float()
    x[:, 2] = (state == 0).float()
    x[:, 3] = 1.0
    return x, move
